"""A tensor-parallel worker process (rank 1..N-1): commands in over a pipe, one reply each.

Started by ``tp.TensorParallelGroup`` with the ``spawn`` context. It joins the
group's process group over the leader's TCP store, loads its share of the model on
``load``, then runs the same forward as the leader on every ``generate_step`` (the
collectives inside the sharded layers meet the leader's). See ``tp_protocol.py``
for the commands.

It exits on ``shutdown``, when its pipe closes, and when its parent goes away (a
watchdog thread: a worker blocked in a collective must not outlive the neuron).
"""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

_PARENT_CHECK_S = 1.0


def main(
    conn: Connection,
    rank: int,
    world: int,
    port: int,
    backend: str,
    timeout_s: float,
    load_timeout_s: float,
    parent_pid: int,
) -> None:
    """Rendezvous and loading get ``load_timeout_s``; every collective after, ``timeout_s``."""
    _watch_parent(parent_pid)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["LOCAL_RANK"] = str(rank)  # transformers' TP binds its device from this
    model: Any = None
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            command = message[0]
            try:
                if command == "load":
                    params = message[1]
                    _join_group(params.device, rank, world, port, backend, load_timeout_s)
                    from cortex.neuron.engines.dense.rank_model import RankModel

                    model = RankModel(params)
                    limit_collectives(timedelta(seconds=timeout_s))
                elif command == "generate_step":
                    _, tokens, start, fault = message
                    if fault == "hang":
                        time.sleep(10**9)
                    model.forward(tokens, start)
                elif command == "clear_kv_cache":
                    if model is not None:
                        model.clear()
                elif command == "shutdown":
                    _reply(conn, ("ok", None))
                    return
                else:
                    raise ValueError(f"unknown command {command!r}")
                reply = ("ok", None)
            except Exception as exc:  # reported to the leader, which faults the group
                reply = ("error", f"{type(exc).__name__}: {exc}")
            if not _reply(conn, reply):
                return
    finally:
        _leave_group()
        # Exit now: a worker's interpreter shutdown can block in torch's thread pools.
        os._exit(0)


def _reply(conn: Connection, reply: tuple[str, Any]) -> bool:
    try:
        conn.send(reply)
    except (OSError, ValueError):  # the leader is gone
        return False
    return True


def _join_group(
    device: str, rank: int, world: int, port: int, backend: str, timeout_s: float
) -> None:
    import torch
    import torch.distributed as dist

    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timeout)
    join_process_group(backend, store, rank, world, timeout)


def join_process_group(backend: str, store: Any, rank: int, world: int, timeout: timedelta) -> None:
    """``init_process_group`` that a failed attempt cannot spoil for the next one.

    torch names an unnamed default group by a process-wide counter, bumped on every
    attempt and reset only when a group is destroyed: after a rendezvous that timed
    out, this process would look for the next group's keys under another name than a
    fresh worker does, and every later rendezvous would time out too.
    """
    import torch.distributed as dist
    from torch.distributed import distributed_c10d

    if not dist.is_initialized() and hasattr(distributed_c10d, "_world"):
        distributed_c10d._world.group_count = 0
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)


def limit_collectives(timeout: timedelta) -> None:
    """From now on a collective that waits longer than ``timeout`` fails (a hung rank).

    The group was made with the load's longer timeout (spawning a rank and importing
    torch take seconds on a busy machine); steps get the short one. torch has no public
    call for this; without the private one, steps keep the load's timeout and a hung
    rank is still caught by the leader's pipe deadline, only later.
    """
    from torch.distributed import distributed_c10d

    set_timeout = getattr(distributed_c10d, "_set_pg_timeout", None)
    if set_timeout is not None:
        set_timeout(timeout)


def _leave_group() -> None:
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # exiting anyway; the leader tears its side down itself
        pass


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="tp-parent-watch", daemon=True).start()
