"""The leader of a tensor-parallel group: rank 0 here, ranks 1..N-1 in worker processes.

Rank 0 runs in the calling thread (the neuron's device worker) and is the only one
whose logits are sampled. Workers are ``spawn``-ed processes (``tp_worker.py``)
commanded over one pipe each (``tp_protocol.py``); tensors meet in torch.distributed
collectives: ``nccl`` when the model is on CUDA (rank r on ``cuda:r``), ``gloo`` on
the CPU. Rendezvous is a TCP store this process hosts on a free loopback port,
with a finite timeout.

Any failure (a worker's error reply, its death, its silence past the deadline, or
the leader's own error) marks the group faulty: the command raises ``EngineFault``,
every later one raises at once, and ``close`` (always safe, faulty or not) kills
what is left, destroys the process group and closes the port.

torch.distributed keeps one default process group per process, so one neuron
serves at most one tensor-parallel model at a time; a second is refused up front.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from cortex.errors import InvalidRequest
from cortex.neuron.engines.base import EngineFault
from cortex.neuron.engines.dense import tp_worker
from cortex.neuron.engines.dense.rank_model import LoadParams, RankModel
from cortex.neuron.engines.dense.tp_protocol import combine, drain

T = TypeVar("T")
log = logging.getLogger("cortex.neuron.tp")

LOAD_TIMEOUT_S = 600.0  # spawn, import torch, read the checkpoint, cut a shard
# One forward of every rank; also the collectives' own timeout. Under the manager's
# step deadline (60 s), so a stuck rank is reported by the group before the watchdog
# gives up on the whole device thread.
STEP_TIMEOUT_S = 30.0
_CLAIM_WAIT_S = 30.0  # for a faulted group still being torn down on another thread
_SHUTDOWN_WAIT_S = 5.0
_REAP_WAIT_S = 0.5
FAULT_KINDS = ("worker_crash", "hang", "device_error")

# torch.distributed's default group is per process: one group at a time.
_group_free = threading.Condition()
_group_owner: object | None = None


class _Worker:
    """One worker process and the leader's end of its pipe (a ``tp_protocol.Channel``)."""

    def __init__(self, rank: int, process: Any, conn: Connection) -> None:
        self.rank = rank
        self.process = process
        self.conn = conn

    def poll(self, timeout_s: float) -> bool:
        return self.conn.poll(timeout_s)

    def recv(self) -> Any:
        return self.conn.recv()

    def death(self) -> str | None:
        # Its pipe closes as it dies, a moment before it can be reaped.
        self.process.join(_REAP_WAIT_S)
        code = self.process.exitcode
        return None if code is None else f"exit code {code}"


class TensorParallelGroup:
    """N ranks serving one model; the engine drives it like a single-device model."""

    def __init__(
        self,
        params: LoadParams,
        *,
        load_timeout_s: float = LOAD_TIMEOUT_S,
        step_timeout_s: float = STEP_TIMEOUT_S,
    ) -> None:
        if params.world < 2:
            raise ValueError("a tensor-parallel group needs at least 2 ranks")
        self.world = params.world
        self._step_timeout_s = step_timeout_s
        self._backend = "nccl" if params.device.startswith("cuda") else "gloo"
        self._workers: list[_Worker] = []
        self._leader: RankModel | None = None
        self._store: Any = None
        self._faulty: str | None = None
        self._fault_next: str | None = None
        self._closed = False
        self._lost: set[int] = set()  # ranks whose pipe cannot be trusted any more
        self.can_trim = False
        self._claim_group()
        try:
            self._start(params, load_timeout_s)
        except BaseException:
            self.close()
            raise

    # -- what the engine calls -----------------------------------------------------

    def forward(self, tokens: list[int], start: int) -> torch.Tensor:
        """Every rank runs ``tokens`` at ``start``; rank 0's last logits come back."""
        fault, self._fault_next = self._fault_next, None
        worker_fault = fault if fault == "hang" else None

        def leader() -> torch.Tensor:
            if fault == "worker_crash":
                victim = self._workers[-1]
                log.warning("injected fault: killing TP rank %d (pid %s)", victim.rank,
                            victim.process.pid)  # fmt: skip
                os.kill(victim.process.pid, signal.SIGKILL)
            assert self._leader is not None
            logits = self._leader.forward(tokens, start)
            if fault == "device_error":
                raise RuntimeError("injected device error (after the collectives)")
            return logits

        return self._command(
            "generate_step", lambda rank: ("generate_step", tokens, start, worker_fault), leader
        )

    def clear(self) -> None:
        assert self._leader is not None
        self._command("clear_kv_cache", lambda rank: ("clear_kv_cache",), self._leader.clear)

    def inject_fault(self, kind: str) -> None:
        if kind not in FAULT_KINDS:
            raise InvalidRequest(f"unknown fault kind '{kind}' (one of {', '.join(FAULT_KINDS)})")
        self._fault_next = kind

    @property
    def port(self) -> int | None:
        return None if self._store is None else int(self._store.port)

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def close(self) -> None:
        """Stop every rank and free the port; safe after a fault and more than once."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            if worker.rank in self._lost:  # dead, or stuck where it reads no pipe
                worker.process.kill()
            else:
                with contextlib.suppress(OSError, ValueError):
                    worker.conn.send(("shutdown",))
        deadline = time.monotonic() + _SHUTDOWN_WAIT_S
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(_SHUTDOWN_WAIT_S)
            worker.conn.close()
            with contextlib.suppress(ValueError):  # still running after SIGKILL: leave it
                worker.process.close()
        self._workers = []
        if self._leader is not None:
            self._leader.close()
            self._leader = None
        if dist.is_initialized():
            with contextlib.suppress(Exception):  # a dead peer must not stop the teardown
                dist.destroy_process_group()
        self._store = None  # the TCP store's listening socket closes with it
        self._release_group()

    # -- internals -----------------------------------------------------------------

    def _start(self, params: LoadParams, load_timeout_s: float) -> None:
        from transformers import AutoConfig

        # Measured: when transformers reads its first config only after the process
        # group exists, something it sets up then keeps the group (and so the store's
        # port and gloo's) alive after destroy_process_group. Read it before.
        AutoConfig.from_pretrained(params.path, local_files_only=True, trust_remote_code=False)
        # Rendezvous and loading get the load's timeout; steps, after it, the step's.
        timeout = timedelta(seconds=load_timeout_s)
        # Port 0: the store binds a free loopback port itself, no race with other binders.
        self._store = dist.TCPStore(
            "127.0.0.1", 0, self.world, is_master=True, timeout=timeout, wait_for_workers=False
        )
        context = multiprocessing.get_context("spawn")
        for rank in range(1, self.world):
            parent, child = context.Pipe()
            process = context.Process(
                target=tp_worker.main,
                args=(child, rank, self.world, self.port, self._backend, self._step_timeout_s,
                      load_timeout_s, os.getpid()),
                name=f"cortex-tp-rank{rank}",
                daemon=True,
            )  # fmt: skip
            process.start()
            child.close()
            self._workers.append(_Worker(rank, process, parent))
        log.info("tensor-parallel group: %d ranks over %s, store port %s",
                 self.world, self._backend, self.port)  # fmt: skip

        def leader() -> None:
            if self._backend == "nccl":
                torch.cuda.set_device(torch.device(params.device))
            tp_worker.join_process_group(self._backend, self._store, 0, self.world, timeout)
            self._leader = RankModel(dataclasses.replace(params, rank=0))
            tp_worker.limit_collectives(timedelta(seconds=self._step_timeout_s))
            self.can_trim = self._leader.can_trim

        self._command(
            "load",
            lambda rank: (
                "load",
                dataclasses.replace(params, rank=rank, device=_device(params, rank)),
            ),
            leader,
            timeout_s=load_timeout_s,
        )

    def _command(
        self,
        what: str,
        message_for: Callable[[int], tuple[Any, ...]],
        leader: Callable[[], T],
        timeout_s: float | None = None,
    ) -> T:
        """Send ``what`` to every worker, run the leader's part, then drain every reply."""
        if self._faulty is not None:
            raise EngineFault(f"the tensor-parallel group is down: {self._faulty}")
        deadline = time.monotonic() + (timeout_s or self._step_timeout_s)
        sent, send_errors = [], []
        for worker in self._workers:
            try:
                worker.conn.send(message_for(worker.rank))
                sent.append(worker)
            except (OSError, ValueError) as exc:
                send_errors.append(f"rank {worker.rank}: cannot send ({exc})")
                self._lost.add(worker.rank)
        result: T | None = None
        leader_error: BaseException | None = None
        try:
            result = leader()
        except Exception as exc:
            leader_error = exc
        drained = drain(sent, deadline)
        self._lost.update(drained.lost)
        message = combine(what, leader_error, drained, send_errors)
        if message is not None:
            self._faulty = message
            log.error("%s", message)
            raise EngineFault(message) from leader_error
        return result  # type: ignore[return-value]

    def _claim_group(self) -> None:
        global _group_owner
        with _group_free:
            owner = _group_owner
            # A recovery may start while the faulted group's old thread still closes it:
            # wait for that one; a healthy group is refused at once.
            going = owner is None or owner._faulty is not None or owner._closed
            free = going and _group_free.wait_for(
                lambda: _group_owner is None and not dist.is_initialized(), _CLAIM_WAIT_S
            )
            if not free:
                raise InvalidRequest(
                    "this neuron already serves a tensor-parallel model; torch.distributed "
                    "allows one process group per process: unload it first"
                )
            _group_owner = self

    def _release_group(self) -> None:
        global _group_owner
        with _group_free:
            if _group_owner is self:
                _group_owner = None
                _group_free.notify_all()


def _device(params: LoadParams, rank: int) -> str:
    """Rank r's device: the one placement named for it, else the CPU for every rank, or
    the r-th GPU after the leader's."""
    if params.devices:
        return params.devices[rank]
    if not params.device.startswith("cuda"):
        return params.device
    return f"cuda:{(torch.device(params.device).index or 0) + rank}"
