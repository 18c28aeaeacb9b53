"""The neuron's side of an engine process: start it, talk to it, notice when it dies.

``EngineProcess.launch`` spawns ``engine_host.main`` for one model and returns once
the model has loaded and passed its canary. From then on the neuron's request code
uses it much as it used an in-process engine: ``submit`` a generation (its events
arrive on the request's sink), ``cancel`` it, ``tokenize``, ``embed``.

Two threads per process keep the event loop from ever blocking on a pipe: a writer
(a child that is stopped, or slow to read, fills the pipe) and a reader (events are
handed to the request sinks, which hop onto the loop themselves). When the pipe
ends, the reader learns how the process ended (a signal, an exit code, a fault it
reported), ends every outstanding request with a ``FailureKind.FAULT`` error, and
calls ``on_exit`` once: the manager poisons the model and rebuilds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cortex.neuron.engines.base import (
    EmbeddingJob,
    EngineFault,
    EngineInfo,
    Failure,
    FailureKind,
    Finished,
    GenerationRequest,
)
from cortex.neuron.runtime import wire
from cortex.spec import ModelSpec

log = logging.getLogger("cortex.neuron.engine_process")

# Signals that mean native code crashed: the ones a safe-settings retry may cure.
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGABRT, signal.SIGFPE)


@dataclass(frozen=True)
class EngineExit:
    """How an engine process ended: ``kind`` is what the metrics count."""

    kind: str  # crash | killed | exited | device_error | engine_error | hang
    signal: str | None
    detail: str
    at: float

    def describe(self) -> str:
        return f"{self.kind} ({self.signal})" if self.signal else self.kind


class EngineLoadFailed(EngineFault):
    """The engine process could not load the model or failed its canary."""

    def __init__(self, message: str, exit: EngineExit | None = None) -> None:
        super().__init__(message)
        self.exit = exit


def _exit_of(process: subprocess.Popen[bytes], reported: list[Any] | None) -> EngineExit:
    """What ended ``process`` (already gone or going), from its status or its own report."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)
    code = process.returncode
    now = time.time()
    if reported is not None:
        return EngineExit(reported[1], None, reported[2], now)
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        kind = "killed" if -code == signal.SIGKILL else "crash"
        return EngineExit(kind, name, f"the engine process died of {name}", now)
    return EngineExit("exited", None, f"the engine process exited with code {code}", now)


class EngineProcess:
    """One model's engine, in a child process. Call from the event loop."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        conn: Connection,
        info: EngineInfo,
        pids: list[int],
        on_exit: Callable[[EngineExit], None],
        on_step: Callable[[int], None],
    ) -> None:
        self.info = info
        self.pids = pids
        self._process = process
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self._on_exit = on_exit
        self._on_step = on_step
        self._ids = itertools.count(1)
        self._requests: dict[int, GenerationRequest] = {}
        self._request_ids: dict[int, int] = {}  # id(request) -> its id on the pipe
        self._embeddings: dict[int, EmbeddingJob] = {}
        self._calls: dict[int, Future[list[int]]] = {}
        self._outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._closing = False
        self._exit: EngineExit | None = None
        self._reported: list[Any] | None = None
        self.last_heard = time.monotonic()
        self._writer = threading.Thread(target=self._write, name=f"engine-w-{pids[0]}", daemon=True)
        self._reader = threading.Thread(target=self._read, name=f"engine-r-{pids[0]}", daemon=True)
        self._writer.start()
        self._reader.start()

    # -- start -------------------------------------------------------------------------

    @classmethod
    async def launch(
        cls,
        path: Path,
        spec: ModelSpec,
        device_id: str,
        n_threads: int,
        *,
        use_extra_buffer_types: bool,
        on_exit: Callable[[EngineExit], None],
        on_step: Callable[[int], None] = lambda sequences: None,
        timeout_s: float = 600,
        kv_disk_dir: Path | None = None,
        kv_host_cache_mb: int | None = None,
    ) -> EngineProcess:
        """Start the engine process and wait for its model to load and pass the canary;
        ``EngineLoadFailed`` (with how the process ended, if it died) when it does not."""
        # A plain child process (not multiprocessing's spawn, which re-imports the
        # parent's __main__) holding one end of a socket pair; Connection frames messages.
        ours, theirs = socket.socketpair()
        process = subprocess.Popen(
            [sys.executable, "-m", "cortex.neuron.runtime.engine_host", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        parent = Connection(ours.detach())
        parent.send_bytes(
            wire.encode(
                [
                    str(path),
                    spec.model_dump(),
                    device_id,
                    n_threads,
                    use_extra_buffer_types,
                    str(kv_disk_dir) if kv_disk_dir else None,
                    kv_host_cache_mb,
                ]
            )
        )
        try:
            first = await asyncio.to_thread(_first_message, parent, process, timeout_s)
        except BaseException:
            _kill(process)
            parent.close()
            raise
        if first is None:  # the process died before it said anything
            exit = await asyncio.to_thread(_exit_of, process, None)
            parent.close()
            raise EngineLoadFailed(
                f"the engine process for '{spec.id}' died loading it: {exit.detail}", exit
            )
        if first[0] == wire.LOAD_FAILED:
            await asyncio.to_thread(_kill, process, 10)
            parent.close()
            raise (
                wire.error_from(first[1])
                if first[1].get("class")
                else EngineLoadFailed(f"'{spec.id}' failed to load: {first[1]['message']}")
            )
        _, info, pids = first
        return cls(process, parent, EngineInfo(**info), pids, on_exit, on_step)

    # -- requests ----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.pids[0]

    @property
    def outstanding(self) -> int:
        """Generations, embeddings and tokenize calls the engine has not finished."""
        return len(self._requests) + len(self._embeddings) + len(self._calls)

    def submit(self, request: GenerationRequest) -> None:
        """Start ``request``; its events arrive on ``request.sink`` (from another thread)."""
        if self._exit is not None:
            raise EngineFault(f"the engine process is gone: {self._exit.detail}")
        request_id = next(self._ids)
        self._begin_work()
        self._requests[request_id] = request
        self._request_ids[id(request)] = request_id
        self._send(
            [
                wire.GENERATE,
                request_id,
                request.prompt_tokens,
                request.max_new_tokens,
                asdict(request.sampling),
                request.stop,
            ]
        )

    def cancel(self, request: GenerationRequest) -> None:
        """The client left: the engine frees the sequence at its next step."""
        request.cancelled = True
        request_id = self._request_ids.get(id(request))
        if request_id is not None and request_id in self._requests:
            self._send([wire.CANCEL, request_id])

    async def tokenize(self, text: str) -> list[int]:
        call_id = next(self._ids)
        future: Future[list[int]] = Future()
        self._begin_work()
        self._calls[call_id] = future
        if self._exit is not None:
            self._calls.pop(call_id, None)
            raise EngineFault(f"the engine process is gone: {self._exit.detail}")
        self._send([wire.TOKENIZE, call_id, text])
        try:
            return await asyncio.wrap_future(future)
        finally:
            self._calls.pop(call_id, None)

    async def embed(self, job: EmbeddingJob) -> list[list[float]]:
        """The job's vectors; a cancelled await cancels the job in the engine."""
        if self._exit is not None:
            raise EngineFault(f"the engine process is gone: {self._exit.detail}")
        job_id = next(self._ids)
        self._begin_work()
        self._embeddings[job_id] = job
        self._send([wire.EMBED, job_id, job.inputs])
        try:
            return await asyncio.wrap_future(job.result)
        except asyncio.CancelledError:
            self._send([wire.CANCEL_EMBED, job_id])
            raise
        finally:
            self._embeddings.pop(job_id, None)

    def inject_fault(self, kind: str) -> None:
        """Testing: ``kill`` now from outside; anything else on the engine's next step."""
        if kind == "kill":
            self.kill()
        else:
            self._send([wire.FAULT, kind])

    # -- health and shutdown ----------------------------------------------------------------

    def alive(self) -> bool:
        return self._exit is None and self._process.poll() is None

    def silent_for(self) -> float:
        """Seconds with work outstanding and no word from the engine; 0 when idle."""
        if not self.outstanding:
            return 0.0
        return time.monotonic() - self.last_heard

    def kill(self, kind: str | None = None) -> None:
        """SIGKILL the engine (and what it started). ``kind`` overrides how the exit is
        counted, e.g. ``hang`` for one the watchdog gave up on."""
        if kind is not None and self._reported is None:
            self._reported = [wire.FAULTED, kind, f"the engine stopped answering ({kind})"]
        for pid in reversed(self.pids):  # ranks first, the engine process last
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    async def close(self, timeout_s: float = 30) -> None:
        """Unload: the engine frees the model and exits; killed if it does not in time."""
        self._closing = True
        if self._exit is None:
            self._send([wire.CLOSE])
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self._process.wait, timeout_s)
        if self._process.poll() is None:
            self.kill()
            await asyncio.to_thread(self._process.wait, 5)
        await asyncio.to_thread(self._reader.join, 5)
        self._outgoing.put(None)

    # -- the threads ---------------------------------------------------------------------

    def _send(self, message: list[Any]) -> None:
        self._outgoing.put(wire.encode(message))

    def _begin_work(self) -> None:
        """Silence counts from when work was given to an idle engine, not from before."""
        if not self.outstanding:
            self.last_heard = time.monotonic()

    def _write(self) -> None:
        while True:
            data = self._outgoing.get()
            if data is None:
                return
            try:
                self._conn.send_bytes(data)
            except (OSError, ValueError):
                return  # the process is gone; the reader reports it

    def _read(self) -> None:
        try:
            while True:
                message = wire.decode(self._conn.recv_bytes())
                self.last_heard = time.monotonic()
                self._dispatch(message)
        except (EOFError, OSError):
            pass
        self._ended()

    def _dispatch(self, message: list[Any]) -> None:
        kind = message[0]
        if kind == wire.EVENTS:
            _, sequences, events = message
            for item in events:
                self._deliver(item)
            if sequences:
                self._on_step(sequences)
        elif kind == wire.TOKENS:
            future = self._calls.get(message[1])
            if future is not None and not future.done():
                future.set_result(message[2])
        elif kind == wire.FAULTED:
            self._reported = message
        # CLOSED needs nothing: the pipe's end follows

    def _deliver(self, item: list[Any]) -> None:
        if item[0] == wire.EMBEDDED:
            _, job_id, vectors, error = item
            job = self._embeddings.get(job_id)
            if job is not None and job.result.set_running_or_notify_cancel():
                if error is None:
                    job.result.set_result(vectors)
                else:
                    job.result.set_exception(wire.error_from(error))
            return
        request_id = item[1]
        request = self._requests.get(request_id)
        if request is None:
            return
        event = wire.decode_event(item)
        if isinstance(event, Finished):
            self._requests.pop(request_id, None)
            self._request_ids.pop(id(request), None)
        request.sink.put(event)

    def _ended(self) -> None:
        """The pipe ended: how the process ended, every waiter told, the manager told."""
        exit = _exit_of(self._process, self._reported)
        self._exit = exit
        if self._closing and self._reported is None:
            failure = Failure(FailureKind.UNLOADED, "model unloaded")
        elif exit.kind == "crash":
            failure = Failure(FailureKind.CRASH, exit.detail)
        else:
            failure = Failure(FailureKind.FAULT, exit.detail)
        for request in list(self._requests.values()):
            request.sink.put(Finished("error", len(request.prompt_tokens), 0, error=failure))
        self._requests.clear()
        self._request_ids.clear()
        for job in list(self._embeddings.values()):
            if job.result.set_running_or_notify_cancel():
                job.result.set_exception(EngineFault(failure.detail))
        for future in list(self._calls.values()):
            if not future.done():
                future.set_exception(EngineFault(failure.detail))
        self._outgoing.put(None)
        with contextlib.suppress(OSError):
            self._conn.close()
        if not self._closing:
            self._loop.call_soon_threadsafe(self._on_exit, exit)


def _first_message(conn: Connection, process: Any, timeout_s: float) -> list[Any] | None:
    """The engine's first word (ready or load_failed), or None if it died first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if conn.poll(0.1):
            try:
                return wire.decode(conn.recv_bytes())
            except (EOFError, OSError):
                return None
        if process.poll() is not None and not conn.poll(0):
            return None
    raise EngineLoadFailed(f"the engine did not load within {timeout_s:.0f} s")


def _kill(process: subprocess.Popen[bytes], grace_s: float = 0) -> None:
    """Let ``process`` exit on its own for ``grace_s``, then kill it."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace_s)
    if process.poll() is None:
        process.kill()
        process.wait(5)
