"""Fakes for the neuron's concurrent core: an engine process, the files behind it, a manager.

Pure Python, in memory and deterministic, so the manager and the generation core can
be tested in milliseconds without model files, llama.cpp or processes:

- ``FakeEngine`` is the engine itself (what ``engine_host`` steps in a real engine
  process). A prompt is one token per character; each step gives every running
  sequence the next piece of its script (one token) through ``emit_generated`` (stop
  strings, budget), then ends it with ``stop`` as an EOS would. At most ``max_batch``
  sequences run; the rest wait their turn.
- ``FakeEngineHandle`` is what the manager holds of an engine process, the in-memory
  twin of ``EngineProcess``: an asyncio task steps the ``FakeEngine`` while it has
  work, and ``kill`` (or a step that "crashes") ends it as a dead process ends: every
  outstanding request gets a ``FailureKind.FAULT`` error, then ``on_exit`` runs on the
  loop. Knobs: ``crash_next_step()`` (the next step dies of SIGSEGV), ``hang()`` and
  ``release()`` (steps stop, so ``silent_for`` grows while work is outstanding),
  ``step_delay_s`` (a slow step).
- ``FakeFiles`` stands in for ``ModelFiles``: ``prepare`` touches a file, ``estimate``
  is the spec's ``memory_mb`` (or a default), the file's sampling defaults are
  ``file_sampling``, and ``launch`` starts fake engines, fails the launches it is told
  to, can hold launches until released, and records every launch's
  ``use_extra_buffer_types``.
- ``running_manager`` is a started ``ModelManager`` over one fake CPU device.

Everything here runs on the test's event loop: no threads, no processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cortex.neuron.api.generation import Prepared
from cortex.neuron.engines.base import (
    UNLOADED,
    EmbeddingJob,
    EngineFault,
    EngineInfo,
    Event,
    Failure,
    FailureKind,
    Finished,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TextChunk,
    emit_generated,
)
from cortex.neuron.engines.textstream import TextAssembler
from cortex.neuron.files.estimate import MemoryEstimate
from cortex.neuron.runtime.devices import Device
from cortex.neuron.runtime.engine_process import EngineExit, EngineLoadFailed
from cortex.neuron.runtime.manager import ModelFiles, ModelManager, ServingModel
from cortex.spec import ModelSpec, SamplingDefaults

REPLY = ("Hello", " world", "!")
N_VOCAB = 0x110000  # token ids are code points
CPU = Device("cpu", "fake CPU", memory_total_mb=4096, threads=1)
GATE_TIMEOUT_S = 10.0  # no fake waits longer than this, whatever a test does


def spec_of(model_id: str = "fake", **fields: Any) -> ModelSpec:
    return ModelSpec(id=model_id, source=f"file:/fake/{model_id}.gguf", **fields)


def tokens_of(text: str) -> list[int]:
    return [ord(c) for c in text]


def prepared_for(
    serving: ServingModel,
    prompt: str = "Hi there",
    max_new_tokens: int = 16,
    stop: list[str] | None = None,
) -> Prepared:
    return Prepared(
        model=serving.id,
        prompt_tokens=tokens_of(prompt),
        max_new_tokens=max_new_tokens,
        sampling=SamplingParams(temperature=0.0),
        stop=stop or [],
    )


async def eventually(check: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Wait (polling the event loop) until ``check()`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_s} s: {check}")
        await asyncio.sleep(0.001)


def crash_exit(signal: str = "SIGSEGV") -> EngineExit:
    """How ``EngineProcess`` reports a process that died of a crash signal."""
    return EngineExit("crash", signal, f"the engine process died of {signal}", time.time())


def canary_crash(signal: str = "SIGSEGV") -> EngineLoadFailed:
    """A launch whose process died in its canary, as ``EngineProcess.launch`` raises it."""
    exit = crash_exit(signal)
    return EngineLoadFailed(f"the engine process died loading it: {exit.detail}", exit)


# -- the engine ------------------------------------------------------------------------------


@dataclass
class _Sequence:
    request: GenerationRequest
    text: TextAssembler
    generated: int = 0


class FakeEngine:
    """A deterministic engine; see the module docstring."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        reply: tuple[str, ...] = REPLY,
        endless: bool = False,
        context_length: int = 256,
    ) -> None:
        self.reply = reply
        self.endless = endless  # cycle the reply: only max_new_tokens ends a sequence
        self.info = EngineInfo(
            context_length=min(context_length, spec.context_length),
            max_batch=spec.max_batch,
            chat_template=None,
            bos_token="",
            eos_token="",
            n_vocab=N_VOCAB,
            embedding_size=4,
        )
        self.step_sequences = 0
        self.max_step_sequences = 0
        self.steps = 0
        self.closed = False
        self.emitted: list[Finished] = []  # every Finished this engine put, in order
        self._waiting: deque[GenerationRequest] = deque()
        self._active: list[_Sequence] = []

    def submit(self, request: GenerationRequest) -> None:
        self._waiting.append(request)

    def has_work(self) -> bool:
        return bool(self._waiting or self._active)

    def step(self) -> None:
        self.steps += 1
        self._drop_cancelled()
        while self._waiting and len(self._active) < self.info.max_batch:
            request = self._waiting.popleft()
            self._active.append(_Sequence(request, TextAssembler(request.stop)))
        self.step_sequences = len(self._active)
        self.max_step_sequences = max(self.max_step_sequences, self.step_sequences)
        for seq in list(self._active):
            self._advance(seq)

    def close(self) -> None:
        for seq in list(self._active):
            self._finish(seq, "error", error=UNLOADED)
        while self._waiting:
            request = self._waiting.popleft()
            self._put(request, Finished("error", len(request.prompt_tokens), 0, error=UNLOADED))
        self.closed = True

    def _advance(self, seq: _Sequence) -> None:
        index = seq.generated
        if index >= len(self.reply) and not self.endless:
            self._finish(seq, "stop")  # the script's EOS
            return
        seq.generated += 1
        end = emit_generated(
            seq.request,
            seq.text,
            self.reply[index % len(self.reply)].encode(),
            generated=seq.generated,
            n_past=len(seq.request.prompt_tokens) + seq.generated,
            context_length=self.info.context_length,
        )
        if end is not None:
            self._finish(seq, end)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._active if s.request.cancelled]:
            self._finish(seq, "cancelled")
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            self._put(request, Finished("cancelled", len(request.prompt_tokens), 0))

    def _finish(self, seq: _Sequence, reason: FinishReason, error: Failure | None = None) -> None:
        tail = seq.text.finish()
        if tail and reason in ("stop", "length"):
            seq.request.sink.put(TextChunk(tail))
        self._active.remove(seq)
        finished = Finished(
            reason,
            prompt_tokens=len(seq.request.prompt_tokens),
            completion_tokens=seq.generated,
            stop_sequence=seq.text.stop.matched,
            error=error,
        )
        self._put(seq.request, finished)

    def _put(self, request: GenerationRequest, finished: Finished) -> None:
        self.emitted.append(finished)
        request.sink.put(finished)


# -- the engine process ----------------------------------------------------------------------


class _Relay:
    """The engine's side of one request's sink: what ``EngineProcess`` relays from the
    pipe to the request's own sink (dropped once the engine is gone)."""

    def __init__(self, handle: FakeEngineHandle, request: GenerationRequest) -> None:
        self._handle, self._request = handle, request

    def put(self, event: Event) -> None:
        self._handle._relay(self._request, event)


class FakeEngineHandle:
    """An ``EngineHandle`` over a ``FakeEngine``, stepped by an asyncio task. Call from
    the event loop, as ``EngineProcess`` is called."""

    def __init__(
        self,
        engine: FakeEngine,
        pid: int,
        *,
        use_extra_buffer_types: bool,
        on_exit: Callable[[EngineExit], None],
        on_step: Callable[[int], None],
        step_delay_s: float = 0.0,
    ) -> None:
        self.engine = engine
        self.info = engine.info
        self.pids = [pid]
        self.use_extra_buffer_types = use_extra_buffer_types
        self.step_delay_s = step_delay_s
        self.exit: EngineExit | None = None  # how it ended; None while it runs
        self.closed = False
        self.cancelled: list[GenerationRequest] = []  # every request ``cancel`` was given
        self.last_heard = time.monotonic()
        self._on_exit = on_exit
        self._on_step = on_step
        self._loop = asyncio.get_running_loop()
        # The neuron's request -> the engine's copy of it (as sent over the pipe).
        self._requests: dict[int, tuple[GenerationRequest, GenerationRequest]] = {}
        self._armed: EngineExit | None = None
        self._closing = False
        self._work = asyncio.Event()
        self._running = asyncio.Event()  # cleared while hung
        self._running.set()
        self._task = asyncio.create_task(self._run(), name=f"fake-engine-{pid}")

    # -- knobs, from the test --------------------------------------------------------

    def crash_next_step(self, signal: str = "SIGSEGV") -> None:
        """The next step kills the process with ``signal``, as a fault in native code."""
        self._armed = crash_exit(signal)

    def hang(self) -> None:
        """Steps stop (as a SIGSTOPped process's do) until ``release()``."""
        self._running.clear()

    def release(self) -> None:
        self._running.set()

    @property
    def outstanding(self) -> int:
        return len(self._requests)

    # -- EngineHandle ----------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> None:
        if self.exit is not None:
            raise EngineFault(f"the engine process is gone: {self.exit.detail}")
        self._begin_work()
        inner = GenerationRequest(
            prompt_tokens=list(request.prompt_tokens),
            max_new_tokens=request.max_new_tokens,
            sampling=request.sampling,
            stop=list(request.stop),
            sink=_Relay(self, request),
        )
        self._requests[id(request)] = (request, inner)
        self.engine.submit(inner)
        self._work.set()

    def cancel(self, request: GenerationRequest) -> None:
        request.cancelled = True
        pair = self._requests.get(id(request))
        if pair is not None:
            self.cancelled.append(request)
            pair[1].cancelled = True
            self._work.set()

    async def tokenize(self, text: str) -> list[int]:
        if self.exit is not None:
            raise EngineFault(f"the engine process is gone: {self.exit.detail}")
        await asyncio.sleep(0)  # an answer over the pipe
        return tokens_of(text)

    async def embed(self, job: EmbeddingJob) -> list[list[float]]:
        if self.exit is not None:
            raise EngineFault(f"the engine process is gone: {self.exit.detail}")
        await asyncio.sleep(0)
        return [[1.0, 0.0, 0.0, 0.0] for _ in job.inputs]

    def inject_fault(self, kind: str) -> None:
        """As ``EngineProcess``: ``kill`` now, the others on the engine's next step."""
        if kind == "kill":
            self.kill()
        elif kind == "hang":
            self.hang()
        elif kind == "segfault":
            self.crash_next_step("SIGSEGV")
        elif kind == "abort":
            self.crash_next_step("SIGABRT")
        else:  # the step raises; the process reports it and exits
            self._armed = EngineExit(kind, None, f"injected {kind}", time.time())

    def silent_for(self) -> float:
        """Seconds with work outstanding and no event from the engine; 0 when idle."""
        if not self.outstanding:
            return 0.0
        return time.monotonic() - self.last_heard

    def kill(self, kind: str | None = None) -> None:
        """End it as a SIGKILLed process ends; ``kind`` overrides how the exit is counted
        (``EngineProcess.kill`` reports such an exit as ``kind``, with no signal)."""
        if self.exit is not None:
            return
        if kind is None:
            detail, signal = "the engine process died of SIGKILL", "SIGKILL"
        else:
            detail, signal = f"the engine stopped answering ({kind})", None
        self._end(EngineExit(kind or "killed", signal, detail, time.time()))

    async def close(self, timeout_s: float = 30) -> None:
        """Unload: what is still outstanding ends ``unloaded``; no ``on_exit``."""
        self._closing = True
        if self.exit is None:
            detail = "the engine process exited with code 0"
            self._end(EngineExit("exited", None, detail, time.time()))
        self.release()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.closed = True

    # -- internals -----------------------------------------------------------------------

    def _begin_work(self) -> None:
        """Silence counts from when work was given to an idle engine, not from before."""
        if not self.outstanding:
            self.last_heard = time.monotonic()

    def _relay(self, request: GenerationRequest, event: Event) -> None:
        if self.exit is not None or id(request) not in self._requests:
            return
        if isinstance(event, Finished):
            self._requests.pop(id(request), None)
        request.sink.put(event)

    async def _run(self) -> None:
        while True:
            await self._work.wait()
            await self._running.wait()
            if not self.engine.has_work():
                self._work.clear()
                continue
            armed, self._armed = self._armed, None
            if armed is not None:
                self._end(armed)
                return
            self.engine.step()
            self.last_heard = time.monotonic()  # the step's events came back
            if self.engine.step_sequences:
                self._on_step(self.engine.step_sequences)
            await asyncio.sleep(self.step_delay_s)

    def _end(self, exit: EngineExit) -> None:
        """The process is gone: every outstanding request told, then the manager."""
        self.exit = exit
        failure = UNLOADED if self._closing else Failure(FailureKind.FAULT, exit.detail)
        for request, _ in list(self._requests.values()):
            request.sink.put(Finished("error", len(request.prompt_tokens), 0, error=failure))
        self._requests.clear()
        if self._task is not asyncio.current_task():
            self._task.cancel()
        if not self._closing:
            self._loop.call_soon(self._on_exit, exit)


# -- the files and the launcher ----------------------------------------------------------------


@dataclass
class FakeFiles:
    """A ``ModelFiles`` stand-in: see the module docstring."""

    root: Path
    memory_mb: int = 100  # the estimate of a spec without ``memory_mb``
    engine_options: dict[str, Any] = field(default_factory=dict)  # FakeEngine kwargs
    step_delay_s: float = 0.0
    # The sampling defaults the model file carries (a GGUF's general.sampling.* keys).
    file_sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    # A machine whose CPU crashes with llama.cpp's extra buffer types (the AMX case):
    # every launch with them on dies in its canary of SIGSEGV.
    crash_with_extra_buffer_types: bool = False
    engines: list[FakeEngineHandle] = field(default_factory=list)  # launched, in order
    launches: list[bool] = field(default_factory=list)  # use_extra_buffer_types, per call
    host_grants: list[int | None] = field(default_factory=list)  # kv_host_cache_mb, per call
    waiting: int = 0  # launches held at the gate now
    _failures: deque[BaseException] = field(default_factory=deque)
    _gate: asyncio.Event = field(default_factory=asyncio.Event)
    _pids: itertools.count[int] = field(default_factory=lambda: itertools.count(4001))

    def __post_init__(self) -> None:
        self._gate.set()

    def model_files(self) -> ModelFiles:
        return ModelFiles(
            prepare=self.prepare,
            estimate=self.estimate,
            launch=self.launch,
            sampling_defaults=lambda _: self.file_sampling,
        )

    # -- knobs, from the test --------------------------------------------------------

    def fail_launches(self, *errors: BaseException) -> None:
        """The next launches raise these, in order; later ones succeed."""
        self._failures.extend(errors)

    def hold_launches(self) -> None:
        """Launches wait until ``release_launches()``."""
        self._gate.clear()

    def release_launches(self) -> None:
        self._gate.set()

    def release_all(self) -> None:
        """Open every gate, so nothing stays stuck after a test."""
        self.release_launches()
        for engine in self.engines:
            engine.release()

    # -- ModelFiles ------------------------------------------------------------------

    def prepare(self, spec: ModelSpec, **_: Any) -> Path:
        path = self.root / f"{spec.id.replace('/', '_')}.gguf"
        path.touch()
        return path

    def estimate(self, path: Path, spec: ModelSpec) -> MemoryEstimate:
        total = spec.memory_mb or self.memory_mb
        return MemoryEstimate(
            format="gguf",
            weights_mb=total,
            kv_cache_mb=0,
            overhead_mb=0,
            total_mb=total,
            embedding_mb=0,
            n_layer=1,
            n_head_kv=1,
            kv_heads_total=1,
            key_length=1,
            value_length=1,
            kv_tokens=spec.context_length * spec.max_batch,
            kv_dtype_bytes=2,
            n_vocab=N_VOCAB,
            overridden=spec.memory_mb is not None,
        )

    async def launch(
        self,
        path: Path,
        spec: ModelSpec,
        device: Device,
        *,
        use_extra_buffer_types: bool,
        on_exit: Callable[[EngineExit], None],
        on_step: Callable[[int], None],
        kv_host_cache_mb: int | None = None,
    ) -> FakeEngineHandle:
        self.launches.append(use_extra_buffer_types)
        self.host_grants.append(kv_host_cache_mb)
        self.waiting += 1
        try:
            await asyncio.wait_for(self._gate.wait(), GATE_TIMEOUT_S)
        finally:
            self.waiting -= 1
        if self._failures:
            raise self._failures.popleft()
        if self.crash_with_extra_buffer_types and use_extra_buffer_types:
            raise canary_crash()
        handle = FakeEngineHandle(
            FakeEngine(spec, **self.engine_options),
            next(self._pids),
            use_extra_buffer_types=use_extra_buffer_types,
            on_exit=on_exit,
            on_step=on_step,
            step_delay_s=self.step_delay_s,
        )
        self.engines.append(handle)
        return handle


@asynccontextmanager
async def running_manager(
    files: FakeFiles,
    *,
    budget_mb: int | None = None,
    step_deadline_s: float = 1.0,
    watch_period_s: float = 0.01,
    kv_host_cache_mb: int | None = None,
) -> AsyncIterator[ModelManager]:
    """A started manager over one fake CPU device; closed (every gate opened, every
    engine ended) on exit."""
    manager = ModelManager(
        [CPU],
        budget_mb,
        step_deadline_s=step_deadline_s,
        files=files.model_files(),
        watch_period_s=watch_period_s,
        kv_host_cache_mb=kv_host_cache_mb,
    )
    manager.start()
    try:
        yield manager
    finally:
        files.release_all()
        await manager.close()
        for engine in files.engines:
            await engine.close()
