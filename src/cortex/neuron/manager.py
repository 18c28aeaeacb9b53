"""The loaded models of one neuron and their lifecycle.

States (transitions happen only in this module):

    loading ──ok──> ready ──fault──> poisoned ──> recovering ──ok──> ready
       └──fail──> (gone)                               └──fail──> (gone)
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
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
from cortex.neuron.engines.base import Engine
from cortex.neuron.estimate import MemoryEstimate, estimate_memory
from cortex.neuron.sources import parse_source, resolve_local
from cortex.neuron.worker import DeviceWorker
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

    def __init__(self, devices: list[Device], memory_budget_mb: int | None) -> None:
        self._workers = [DeviceWorker(device, self.on_engine_fault) for device in devices]
        self._budget_mb = memory_budget_mb
        self._models: dict[str, LoadedModel] = {}
        self._lock = asyncio.Lock()  # loads and unloads one at a time

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
        if spec.tensor_parallel > 1:
            raise InvalidRequest(
                f"tensor_parallel={spec.tensor_parallel} needs a dense safetensors engine; "
                "this node serves GGUF models on one device"
            )
        async with self._lock:
            existing = self._models.get(spec.id)
            if existing is not None:
                if existing.spec.model_dump() != spec.model_dump():
                    raise InvalidRequest(
                        f"model '{spec.id}' is already loaded with a different spec; "
                        "unload it first"
                    )
                return existing
            path = resolve_local(parse_source(spec.source), spec.quant)
            factory = engine_for(path)
            estimate = await asyncio.to_thread(estimate_memory, path, spec)
            worker = self._pick_worker()
            self._check_fits(worker.device, estimate.total_mb, spec)
            model = LoadedModel(
                spec=spec,
                worker=worker,
                memory_mb=estimate.total_mb,
                embedding_mb=estimate.embedding_mb,
            )
            self._models[spec.id] = model
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
        path = resolve_local(parse_source(spec.source), spec.quant)
        engine_for(path)  # the same refusal a load would give for an unservable file
        return await asyncio.to_thread(estimate_memory, path, spec)

    async def unload(self, model_id: str) -> None:
        async with self._lock:
            model = self._models.pop(model_id, None)
            if model is None:
                raise ModelNotFound(model_id, known=list(self._models))
            await self._close(model)
            log.info("unloaded model=%s", model_id)

    async def close(self) -> None:
        """Unload every model and stop the device threads."""
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

    def on_engine_fault(self, engine: Engine, error: BaseException) -> None:
        """Called on a device thread when a decode step fails: the model is poisoned."""
        for model in self._models.values():
            if model.engine is engine:
                model.state = ModelState.POISONED
                log.error("model=%s poisoned: %s", model.id, error)

    # -- internals ---------------------------------------------------------------

    async def _close(self, model: LoadedModel) -> None:
        engine, worker = model.engine, model.worker
        model.engine = None
        if engine is not None:
            await worker.run(lambda: (worker.detach(engine), engine.close()))

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
