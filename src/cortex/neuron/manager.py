"""The loaded models of one neuron and their lifecycle.

States (transitions happen only in this module):

    loading ──ok──> ready ──fault──> poisoned ──> recovering ──ok──> ready
       └──fail──> (gone)                               └──fail──> (gone)

A fault is anything that leaves the model's state in doubt: a decode step that
raised, a device thread that died, a step that ran past the watchdog deadline.
The model's requests end at once, new ones get 503 + Retry-After, and a
background task (one per model, never on a request's path) closes the engine,
builds a new one from the retained spec, checks that it generates, and marks it
ready. A failed reload leaves the model unloaded; the next load starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cortex.errors import (
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    ModelRecovering,
    Unavailable,
)
from cortex.neuron.devices import Device, read_memory
from cortex.neuron.engines import engine_for
from cortex.neuron.engines.base import (
    Engine,
    EngineFault,
    Event,
    Finished,
    GenerationRequest,
    SamplingParams,
)
from cortex.neuron.estimate import MemoryEstimate, estimate_memory
from cortex.neuron.metrics import NeuronMetrics
from cortex.neuron.sources import headers_of, prepare_source
from cortex.neuron.worker import FAULT_KINDS, DeviceWorker
from cortex.spec import ModelSpec

log = logging.getLogger("cortex.neuron.manager")


class ModelState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    POISONED = "poisoned"
    RECOVERING = "recovering"


@dataclass
class LoadedModel:
    spec: ModelSpec
    worker: DeviceWorker
    state: ModelState = ModelState.LOADING
    engine: Engine | None = None
    memory_mb: int = 0
    # What an embedding context adds (the estimate's embedding_mb), and whether memory_mb
    # counts it yet: it is created on the first embeddings request, if ever.
    embedding_mb: int = 0
    embedding_counted: bool = False
    in_flight: int = 0
    last_used: float = field(default_factory=time.time)
    path: Path | None = None  # the file the spec resolved to; a recovery reloads it
    metrics: NeuronMetrics | None = None
    # Called with a reason when the model faults: each ends one waiting request.
    fault_listeners: set[Callable[[str], None]] = field(default_factory=set)

    def fail_requests(self, reason: str) -> None:
        for listener in list(self.fault_listeners):
            listener(reason)

    @property
    def id(self) -> str:
        return self.spec.id

    def status(self) -> dict[str, Any]:
        max_batch = self.engine.info.max_batch if self.engine else self.spec.max_batch
        return {
            "id": self.id,
            "state": self.state.value,
            "spec": self.spec.model_dump(),
            "devices": [self.worker.device.id],
            "memory_mb": self.memory_mb,
            "context_length": self.engine.info.context_length if self.engine else None,
            "in_flight": min(self.in_flight, max_batch),
            "queued": max(0, self.in_flight - max_batch),
            "last_used": self.last_used,
        }


class ModelManager:
    """Owns every model on this node; request handlers only read from it."""

    def __init__(
        self,
        devices: list[Device],
        memory_budget_mb: int | None,
        *,
        step_deadline_s: float = 60.0,
        metrics: NeuronMetrics | None = None,
        cpu_tp_ranks: int = 1,
    ) -> None:
        self._workers = [self._new_worker(device) for device in devices]
        self._cpu_tp_ranks = cpu_tp_ranks  # ranks tensor_parallel may use on a GPU-less node
        self._budget_mb = memory_budget_mb
        self._deadline_s = step_deadline_s
        self._metrics = metrics or NeuronMetrics()
        self._models: dict[str, LoadedModel] = {}
        self._lock = asyncio.Lock()  # loads, unloads and recoveries one at a time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._recoveries: dict[str, asyncio.Task[None]] = {}
        self._metrics.watch_states(lambda: [(m.id, m.state.value) for m in self.models()])

    @property
    def metrics(self) -> NeuronMetrics:
        return self._metrics

    def start(self) -> None:
        """Start watching the device threads; call from the app's lifespan."""
        self._loop = asyncio.get_running_loop()
        self._watchdog = asyncio.create_task(self._watch(), name="neuron-watchdog")

    # -- reads -----------------------------------------------------------------

    def models(self) -> list[LoadedModel]:
        return list(self._models.values())

    def ready(self, model_id: str) -> LoadedModel:
        """The model if it can serve now, else the error saying why not."""
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(model_id, known=list(self._models))
        if model.state in (ModelState.POISONED, ModelState.RECOVERING):
            raise ModelRecovering(model_id)
        if model.state is ModelState.LOADING or model.engine is None:
            raise Unavailable(f"The model '{model_id}' is still loading.", retry_after_s=2)
        return model

    def devices_status(self) -> list[dict[str, Any]]:
        out = []
        for worker in self._workers:
            device = worker.device
            reading = read_memory(device)
            out.append(
                {
                    "id": device.id,
                    "name": device.name,
                    "memory_total_mb": reading.total_mb,
                    "memory_free_mb": reading.free_mb,
                    "memory_budget_mb": self._budget_mb,
                    "memory_used_by_models_mb": self._used_mb(device),
                }
            )
        return out

    # -- lifecycle ---------------------------------------------------------------

    async def load(self, spec: ModelSpec) -> LoadedModel:
        # Preflight (422 for what this node can never serve) and any download run before
        # the lock: a long download must not hold up other loads, unloads and recoveries.
        path = None if spec.id in self._models else await self._prepare(spec)
        async with self._lock:
            existing = self._models.get(spec.id)
            if existing is not None:
                if existing.spec.model_dump() != spec.model_dump():
                    raise InvalidRequest(
                        f"model '{spec.id}' is already loaded with a different spec; "
                        "unload it first"
                    )
                return existing
            path = path or await self._prepare(spec)  # unloaded while this load waited
            factory = engine_for(path)
            estimate = await asyncio.to_thread(estimate_memory, path, spec)
            worker = self._pick_worker()
            self._check_fits(worker.device, estimate.total_mb, spec)
            model = LoadedModel(
                spec=spec,
                path=path,
                worker=worker,
                memory_mb=estimate.total_mb,
                embedding_mb=estimate.embedding_mb,
            )
            self._models[spec.id] = model
            model.metrics = self._metrics
            started = time.perf_counter()
            try:
                model.engine = await worker.run(lambda: _construct(factory, path, spec, worker))
            except BaseException:
                self._models.pop(spec.id, None)
                if model.engine is not None:
                    await self._close(model)
                raise
            model.state = ModelState.READY
            log.info(
                "loaded model=%s device=%s memory_mb=%d seconds=%.2f",
                spec.id,
                worker.device.id,
                model.memory_mb,
                time.perf_counter() - started,
            )
            return model

    async def estimate(self, spec: ModelSpec) -> MemoryEstimate:
        """What loading ``spec`` would take, from its files' headers; nothing is loaded."""
        return await asyncio.to_thread(_estimate_from_headers, spec)

    async def unload(self, model_id: str) -> None:
        async with self._lock:
            model = self._models.pop(model_id, None)
            if model is None:
                raise ModelNotFound(model_id, known=list(self._models))
            await self._close(model)
            log.info("unloaded model=%s", model_id)

    async def close(self) -> None:
        """Stop watching and recovering, unload every model, stop the device threads."""
        tasks = [t for t in (self._watchdog, *self._recoveries.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for model_id in list(self._models):
            await self.unload(model_id)
        for worker in self._workers:
            worker.stop()

    def count_embedding_context(self, model: LoadedModel) -> None:
        """Count the embedding context in the model's memory before the engine creates it;
        507 when the node's budget has no room left for it."""
        if model.embedding_counted:
            return
        self._check_fits(model.worker.device, model.memory_mb + model.embedding_mb, model.spec)
        model.memory_mb += model.embedding_mb
        model.embedding_counted = True

    async def inject_fault(self, model_id: str, kind: str) -> None:
        """Testing only: the model's next decode step hits ``kind``."""
        if kind not in FAULT_KINDS:
            kinds = ", ".join(FAULT_KINDS)
            raise InvalidRequest(f"fault kind must be one of {kinds}", param="kind")
        model = self.ready(model_id)
        engine, worker = model.engine, model.worker
        assert engine is not None
        crash_a_rank = getattr(engine, "inject_fault", None)
        if kind == "worker_crash" and crash_a_rank is not None:  # a multi-process engine
            await worker.run(lambda: crash_a_rank(kind))
        else:
            await worker.run(lambda: worker.arm_fault(engine, kind))  # type: ignore[arg-type]
        log.warning("fault armed model=%s kind=%s", model_id, kind)

    def on_engine_fault(self, engine: Engine, error: BaseException) -> None:
        """Called on a device thread when a decode step fails: the model is poisoned."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._poison_engine, engine, f"engine fault: {error}")

    # -- faults and recovery (on the event loop) ----------------------------------

    def _poison_engine(self, engine: Engine, reason: str) -> None:
        for model in list(self._models.values()):
            if model.engine is engine:
                self._poison(model, reason)

    def _poison(self, model: LoadedModel, reason: str) -> None:
        if model.state is not ModelState.READY:
            return  # already poisoned or recovering, or still loading (its load fails)
        model.state = ModelState.POISONED
        log.error("model=%s poisoned: %s", model.id, reason)
        model.fail_requests(reason)
        if model.id not in self._recoveries:
            task = asyncio.create_task(self._recover(model.id), name=f"recover-{model.id}")
            self._recoveries[model.id] = task
            task.add_done_callback(lambda _: self._recoveries.pop(model.id, None))

    async def _watch(self, period_s: float = 0.25) -> None:
        """A device thread that died or a step past the deadline: replace the thread."""
        while True:
            await asyncio.sleep(period_s)
            for worker in list(self._workers):
                if not worker.is_alive():
                    self._replace_worker(worker, "its device thread died")
                elif worker.step_age() > self._deadline_s:
                    self._replace_worker(
                        worker, f"a decode step ran past the {self._deadline_s:g} s deadline"
                    )

    def _replace_worker(self, old: DeviceWorker, reason: str) -> None:
        log.error("device=%s worker replaced: %s", old.device.id, reason)
        self._workers[self._workers.index(old)] = self._new_worker(old.device)
        # Requests learn of the fault before the old thread, let go, closes their engines.
        for model in list(self._models.values()):
            if model.worker is old:  # every model on a lost thread is in doubt
                self._poison(model, f"engine fault: {reason}")
        old.abandon()

    async def _recover(self, model_id: str) -> None:
        async with self._lock:
            model = self._models.get(model_id)
            if model is None or model.state is not ModelState.POISONED:
                return
            model.state = ModelState.RECOVERING
            started = time.perf_counter()
            old_engine, old_worker = model.engine, model.worker
            model.engine = None
            if old_engine is not None and not old_worker.abandoned:
                with contextlib.suppress(Exception, TimeoutError):
                    await asyncio.wait_for(
                        old_worker.run(lambda: (old_worker.detach(old_engine), old_engine.close())),
                        self._deadline_s,
                    )
            worker = self._worker_on(old_worker.device)
            engine: Engine | None = None
            try:
                if model.path is None or not model.path.exists():
                    raise EngineFault(f"the model file {model.path} is gone")
                path, spec = model.path, model.spec
                factory = engine_for(path)
                engine = await worker.run(lambda: _construct(factory, path, spec, worker))
                # a prompt's prefill and two steps, on a device busy with other models
                await _sanity_check(engine, worker, timeout_s=3 * self._deadline_s)
            except Exception as exc:
                self._models.pop(model_id, None)
                if engine is not None:
                    with contextlib.suppress(Exception):
                        await worker.run(lambda: (worker.detach(engine), engine.close()))
                self._metrics.recoveries.labels(model_id, "failed").inc()
                log.error(
                    "recovery failed model=%s reason=%s detail=%r: unloaded; the next load "
                    "starts afresh",
                    model_id,
                    getattr(exc, "kind", type(exc).__name__),
                    str(exc),
                )
                return
            model.engine, model.worker, model.state = engine, worker, ModelState.READY
            self._metrics.recoveries.labels(model_id, "ok").inc()
            log.info(
                "recovered model=%s device=%s seconds=%.2f",
                model_id,
                worker.device.id,
                time.perf_counter() - started,
            )

    # -- internals ---------------------------------------------------------------

    async def _prepare(self, spec: ModelSpec) -> Path:
        """The spec's source listed, preflighted and fetched: the local path to load."""
        gpus = sum(1 for w in self._workers if w.device.id != "cpu")
        room = self._pick_worker().device
        free_mb = read_memory(room).free_mb + self._used_mb(room)  # were ours all unloaded
        if self._budget_mb is not None:
            free_mb = min(free_mb, self._budget_mb)
        return await asyncio.to_thread(
            prepare_source,
            spec,
            devices_available=gpus or self._cpu_tp_ranks,
            free_mb=free_mb,
        )

    async def _close(self, model: LoadedModel) -> None:
        engine, worker = model.engine, model.worker
        model.engine = None
        if engine is not None:
            await worker.run(lambda: (worker.detach(engine), engine.close()))

    def _new_worker(self, device: Device) -> DeviceWorker:
        return DeviceWorker(device, self.on_engine_fault, self._observe_step)

    def _observe_step(self, engine: Engine, sequences: int) -> None:
        """On a device thread, after each decode step: the batch size histogram."""
        for model in list(self._models.values()):
            if model.engine is engine:
                self._metrics.batch_size.labels(model.id).observe(sequences)

    def _worker_on(self, device: Device) -> DeviceWorker:
        return next(w for w in self._workers if w.device.id == device.id)

    def _pick_worker(self) -> DeviceWorker:
        # GPUs first (the CPU is the fallback), the one with most free memory.
        gpus = [w for w in self._workers if w.device.id != "cpu"]
        if gpus:
            return max(gpus, key=lambda w: read_memory(w.device).free_mb)
        return self._workers[0]

    def _used_mb(self, device: Device, exclude: str | None = None) -> int:
        return sum(
            m.memory_mb
            for m in self._models.values()
            if m.worker.device.id == device.id and m.id != exclude
        )

    def _check_fits(self, device: Device, need_mb: int, spec: ModelSpec) -> None:
        if self._budget_mb is None:
            return
        left = self._budget_mb - self._used_mb(device, exclude=spec.id)
        if need_mb > left:
            raise InsufficientMemory(
                f"model '{spec.id}' needs about {need_mb} MB on {device.id} but only {left} MB "
                f"of the node's {self._budget_mb} MB budget is left",
                code="insufficient_memory",
            )


def _construct(factory, path, spec: ModelSpec, worker: DeviceWorker) -> Engine:
    engine = factory(path, spec, worker.device.id, worker.device.threads)
    worker.attach(engine)
    return engine


class _FinishSink:
    """Keeps only how a generation ended (for the post-recovery check)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[Finished] = self._loop.create_future()

    def put(self, event: Event) -> None:
        if isinstance(event, Finished):
            self._loop.call_soon_threadsafe(
                lambda: self.finished.done() or self.finished.set_result(event)
            )


async def _sanity_check(engine: Engine, worker: DeviceWorker, timeout_s: float) -> None:
    """A short greedy generation: the rebuilt model must answer before it serves."""
    sink = _FinishSink()
    request = GenerationRequest(
        prompt_tokens=engine.tokenize_prompt("Hello"),
        max_new_tokens=2,
        sampling=SamplingParams(temperature=0.0),
        stop=[],
        sink=sink,
    )
    await worker.run(lambda: engine.submit(request))
    try:
        finished = await asyncio.wait_for(sink.finished, timeout_s)
    finally:
        request.cancelled = True
    if finished.reason not in ("stop", "length"):
        raise EngineFault(f"the reloaded model failed its check: {finished.error}")


def _estimate_from_headers(spec: ModelSpec) -> MemoryEstimate:
    """Blocking: the estimate of ``spec`` read from its files' headers (an ``hf:`` source's
    weights are not downloaded for it)."""
    with headers_of(spec) as path:
        engine_for(path)  # the same refusal a load would give for an unservable file
        return estimate_memory(path, spec)
