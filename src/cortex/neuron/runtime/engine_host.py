"""The engine process: one loaded model, in a child of the neuron, stepped in a loop.

Native inference code (llama.cpp, torch) runs only here, so a crash in it (a
segfault, an abort, the OOM killer) costs this one model a restart, never the
neuron or its other models. The neuron talks to it over one duplex pipe
(``runtime/wire.py`` says what travels); ``engine_process.py`` is the other end.

Two threads: the main one owns the engine and runs the decode loop (the engine
protocol's one-thread rule still holds); a reader thread takes commands off the
pipe, answers tokenize calls at once (tokenizing only reads the vocabulary), and
queues the rest for the loop. After each step the loop sends every event the step
produced in one message, so a step costs one pipe write whatever the batch size.

Before it says ``ready`` the new engine generates two greedy tokens (the canary):
a fast path that crashes on this machine's CPU crashes here, during the load,
where the neuron can retry with safe settings (``engine_process.launch``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cortex.errors import CortexError
from cortex.lifetime import die_with_parent
from cortex.neuron.engines.base import (
    EmbeddingJob,
    Engine,
    EngineFault,
    Event,
    Failure,
    FailureKind,
    Finished,
    GenerationRequest,
    SamplingParams,
)
from cortex.neuron.runtime import wire
from cortex.spec import ModelSpec

log = logging.getLogger("cortex.neuron.engine")

# Test hook: the canary crashes (SIGSEGV) while llama.cpp's extra buffer types are on,
# as the AMX path did on one Xeon; proves the fallback without that CPU.
CRASH_CANARY_ENV = "CORTEX_TEST_CRASH_CANARY_WITH_EXTRA_BUFTS"


def crash_natively() -> None:
    """Dereference NULL in native code: a real SIGSEGV, as a buggy kernel would give."""
    ctypes.string_at(0)


class _Outbox:
    """Events of the current step, sent as one message after it."""

    def __init__(self) -> None:
        self.events: list[list[Any]] = []

    def sink_for(self, request_id: int, done: Callable[[int], None]) -> _Sink:
        return _Sink(request_id, self, done)


class _Sink:
    def __init__(self, request_id: int, outbox: _Outbox, done: Callable[[int], None]) -> None:
        self._id, self._outbox, self._done = request_id, outbox, done

    def put(self, event: Event) -> None:
        self._outbox.events.append(wire.encode_event(self._id, event))
        if isinstance(event, Finished):
            self._done(self._id)


class _LocalSink:
    """The canary's sink: keeps how it ended."""

    def __init__(self) -> None:
        self.finished: Finished | None = None

    def put(self, event: Event) -> None:
        if isinstance(event, Finished):
            self.finished = event


# Long enough that the prefill goes through the batched matrix kernels: llama.cpp's
# AMX kernels on a Xeon whose hypervisor does not enable AMX die of SIGILL on any batch
# of two or more tokens, while a one-token prompt decodes through the vector path and
# passes (measured on such a Xeon: "Hello" passed, every longer prompt crashed).
_CANARY_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 5)


def _canary(engine: Engine) -> None:
    """Prefill a prompt of some fifty tokens and decode two greedy tokens; raise if that
    fails."""
    sink = _LocalSink()
    engine.submit(
        GenerationRequest(
            prompt_tokens=engine.tokenize_prompt(_CANARY_PROMPT),
            max_new_tokens=2,
            sampling=SamplingParams(temperature=0.0),
            stop=[],
            sink=sink,
            # Never from a cache: the disk tier outlives the engine, and a canary whose
            # prompt an earlier engine left there would skip the kernels it must try.
            use_cache=False,
        )
    )
    if os.environ.get(CRASH_CANARY_ENV) and getattr(engine, "uses_extra_buffer_types", False):
        crash_natively()
    for _ in range(64):
        if sink.finished is not None or not engine.has_work():
            break
        engine.step()
    finished = sink.finished
    if finished is None or finished.reason not in ("stop", "length"):
        detail = finished.error.detail if finished and finished.error else "no answer"
        raise EngineFault(f"the canary generation failed: {detail}")


class _Host:
    def __init__(self, conn: Connection, engine: Engine) -> None:
        self._conn = conn
        self._engine = engine
        self._send_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
        self._requests: dict[int, GenerationRequest] = {}
        self._embeddings: dict[int, EmbeddingJob] = {}
        self._outbox = _Outbox()
        self._armed: str | None = None

    def send(self, message: list[Any]) -> None:
        data = wire.encode(message)
        with self._send_lock:
            self._conn.send_bytes(data)

    # -- the reader thread -----------------------------------------------------------

    def read(self) -> None:
        try:
            while True:
                message = wire.decode(self._conn.recv_bytes())
                if message[0] == wire.TOKENIZE:
                    _, call_id, text = message
                    self.send([wire.TOKENS, call_id, self._engine.tokenize_prompt(text)])
                else:
                    self._jobs.put(message)
        except (EOFError, OSError):
            self._jobs.put(None)  # the neuron is gone: stop

    # -- the main thread ---------------------------------------------------------------

    def run(self) -> None:
        while True:
            busy = self._engine.has_work()
            try:
                message = self._jobs.get(block=not busy)
            except queue.Empty:
                message = None
            else:
                if message is None or message[0] == wire.CLOSE:
                    self._close()
                    return
                self._handle(message)
                continue  # every queued command before the next step
            self._step()

    def _handle(self, message: list[Any]) -> None:
        kind = message[0]
        if kind == wire.GENERATE:
            _, request_id, prompt, max_new, sampling, stop = message
            request = GenerationRequest(
                prompt_tokens=prompt,
                max_new_tokens=max_new,
                sampling=SamplingParams(**sampling),
                stop=stop,
                sink=self._outbox.sink_for(request_id, self._requests.pop),
            )
            self._requests[request_id] = request
            try:
                self._engine.submit(request)
            except CortexError as exc:  # this request, not the engine: a 400, no fault
                self._requests.pop(request_id, None)
                refused = Failure(FailureKind.REFUSED, exc.message)
                finished = Finished("error", len(prompt), 0, error=refused)
                self._outbox.events.append(wire.encode_event(request_id, finished))
                self._flush(0, always=True)
        elif kind == wire.CANCEL:
            request = self._requests.get(message[1])
            if request is not None:
                request.cancelled = True
        elif kind == wire.EMBED:
            self._embed(message[1], message[2])
        elif kind == wire.CANCEL_EMBED:
            job = self._embeddings.get(message[1])
            if job is not None:
                job.cancelled = True
        elif kind == wire.FAULT:
            self._armed = message[1]

    def _embed(self, job_id: int, inputs: list[list[int]]) -> None:
        job = EmbeddingJob(inputs=inputs)
        self._embeddings[job_id] = job

        def done(future: Future[list[list[float]]]) -> None:
            self._embeddings.pop(job_id, None)
            error = future.exception()
            if error is None:
                self._outbox.events.append([wire.EMBEDDED, job_id, future.result(), None])
            else:
                self._outbox.events.append([wire.EMBEDDED, job_id, None, wire.error_of(error)])

        job.result.add_done_callback(done)
        try:
            self._engine.submit_embedding(job)
        except CortexError as exc:
            if job.result.set_running_or_notify_cancel():
                job.result.set_exception(exc)
        self._flush(0)

    def _step(self) -> None:
        armed, self._armed = self._armed, None
        try:
            if armed is not None:
                _suffer(armed)
            self._engine.step()
        except Exception as exc:  # the engine's state is in doubt: report, then end
            kind = "device_error" if armed == "device_error" else "engine_error"
            log.exception("engine step failed")
            self._flush(getattr(self._engine, "step_sequences", 0))
            self.send([wire.FAULTED, kind, str(exc)])
            os._exit(3)
        # Sent even when empty (a slice of a long embeddings job): the neuron's watchdog
        # takes a busy engine that says nothing for step_deadline_s for a hung one.
        self._flush(getattr(self._engine, "step_sequences", 0), always=True)

    def _flush(self, sequences: int, *, always: bool = False) -> None:
        events, self._outbox.events = self._outbox.events, []
        if events or sequences or always:
            self.send([wire.EVENTS, sequences, events])

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            self._engine.close()
        self._flush(0)
        with contextlib.suppress(OSError):
            self.send([wire.CLOSED])


def _suffer(kind: str) -> None:
    """An injected fault, suffered for real (``POST /debug/fault``)."""
    if kind == "segfault":
        crash_natively()
    elif kind == "abort":
        os.abort()
    elif kind == "hang":
        os.kill(os.getpid(), signal.SIGSTOP)  # stops answering until killed
    elif kind == "device_error":
        raise EngineFault("injected device error")


def main(conn: Connection) -> None:
    """The engine process: load what the first message names, then serve until closed."""
    path, spec, device_id, n_threads, use_extra_buffer_types, kv_disk_dir, host_mb = wire.decode(
        conn.recv_bytes()
    )
    die_with_parent(signal.SIGKILL)  # a neuron gone (even by SIGKILL) frees the device
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the neuron, which closes us
    # to the neuron's stderr (inherited), marked as this engine's
    logging.basicConfig(level=logging.INFO, format="engine %(levelname)s %(name)s %(message)s")
    from cortex.neuron.engines import engine_for

    try:
        model_spec = ModelSpec.model_validate(spec)
        factory = engine_for(Path(path))
        engine = factory(
            Path(path),
            model_spec,
            device_id,
            n_threads,
            use_extra_buffer_types=use_extra_buffer_types,
            kv_disk_dir=Path(kv_disk_dir) if kv_disk_dir else None,
            kv_host_cache_mb=host_mb,
        )
        _canary(engine)
    except Exception as exc:
        conn.send_bytes(wire.encode([wire.LOAD_FAILED, wire.error_of(exc)]))
        return
    host = _Host(conn, engine)
    pids = [os.getpid(), *getattr(engine, "worker_pids", lambda: [])()]
    host.send([wire.READY, asdict(engine.info), pids])
    threading.Thread(target=host.read, name="engine-reader", daemon=True).start()
    host.run()


if __name__ == "__main__":  # started by engine_process.EngineProcess.launch
    main(Connection(int(sys.argv[1])))
