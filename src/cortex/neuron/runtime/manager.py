"""The loaded models of one neuron and their lifecycle.

States (transitions happen only in this module):

    loading ──ok──> ready ──fault──> poisoned ──> recovering ──ok──> ready
       └──fail──> (gone)                               └──fail──> (gone)

Every model's engine runs in a process of its own (``engine_process.py``). A fault
is anything that leaves the engine's state in doubt: the process died (a segfault
or abort in native code, the OOM killer), a step raised, or the engine went silent
with work outstanding for longer than the step deadline (the watchdog kills it).
The model's requests end at once, new ones get 503 + Retry-After, and a background
task (one per model, never on a request's path) starts a new engine process from
the retained spec; the new engine passes its canary before the model is ready
again. A failed reload leaves the model unloaded; the next load starts afresh.
Other models, in other processes, never notice.

The node is the arbiter of its own memory, whoever asks (several gateways may):
loads run one at a time under the manager's lock, and each is checked against what
the device has left right then, the models loaded and loading counted at their
estimates; one that does not fit is refused (507 ``insufficient_memory``, with the
numbers) before anything is allocated. A load of a model already under way is joined,
not started again: every caller waits on the one load and sees its outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

from cortex.errors import (
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    ModelRecovering,
    Unavailable,
)
from cortex.neuron.engines import engine_for
from cortex.neuron.engines.base import EmbeddingJob, EngineFault, EngineInfo, GenerationRequest
from cortex.neuron.engines.device_set import join_devices
from cortex.neuron.files.estimate import MemoryEstimate, estimate_memory
from cortex.neuron.files.sampling_defaults import read_sampling_defaults
from cortex.neuron.files.sources import headers_of, prepare_source
from cortex.neuron.metrics import NeuronMetrics
from cortex.neuron.runtime.devices import Device, engine_support, read_memory
from cortex.neuron.runtime.engine_process import EngineExit, EngineLoadFailed, EngineProcess
from cortex.protocol.neuron import (
    DeviceStatus,
    EngineFaultStatus,
    LoadOutcome,
    ModelState,
    ModelStatus,
)
from cortex.protocol.prefix_digest import PrefixSet
from cortex.spec import ModelSpec, SamplingDefaults

log = logging.getLogger("cortex.neuron.runtime.manager")

FaultKind = Literal["segfault", "abort", "kill", "hang", "device_error"]
FAULT_KINDS: tuple[FaultKind, ...] = ("segfault", "abort", "kill", "hang", "device_error")


class EngineHandle(Protocol):
    """What the neuron holds of a running engine (``EngineProcess``; fakes in tests)."""

    info: EngineInfo
    pids: list[int]

    def submit(self, request: GenerationRequest) -> None: ...
    def cancel(self, request: GenerationRequest) -> None: ...
    async def tokenize(self, text: str) -> list[int]: ...
    async def embed(self, job: EmbeddingJob) -> list[list[float]]: ...
    def inject_fault(self, kind: str) -> None: ...
    def silent_for(self) -> float: ...
    def kill(self, kind: str | None = None) -> None: ...
    async def close(self, timeout_s: float = 30) -> None: ...


Launcher = Callable[..., Awaitable[EngineHandle]]

# Chain hashes a model reports as its prefix digest. The digest approximates what the
# engine's cache tiers hold (llama.cpp keeps ``max_batch`` slots on the device and a
# host-RAM tier of a few hundred saved sequences at most, both LRU): a conversation
# adds about one hash per message, so 1024 hashes cover some fifty to a hundred
# conversations, about as many as those tiers keep. An entry the engine has already
# evicted costs a prefill where it is sent, nothing worse. About 20 kB in /status.
PREFIX_DIGEST_HASHES = 1024


@dataclass
class LoadedModel:
    spec: ModelSpec
    device: Device  # the main one (rank 0, llama.cpp's main_gpu)
    path: Path  # the file the spec resolved to; a recovery reloads it
    state: ModelState = ModelState.LOADING
    engine: EngineHandle | None = None
    memory_mb: int = 0
    # What an embedding context adds (the estimate's embedding_mb), and whether memory_mb
    # counts it yet: it is created on the first embeddings request, if ever.
    embedding_mb: int = 0
    embedding_counted: bool = False
    in_flight: int = 0
    last_used: float = field(default_factory=time.time)
    metrics: NeuronMetrics | None = None
    # Kept across restarts: the settings the canary proved safe on this machine.
    use_extra_buffer_types: bool = True
    fallback: str | None = None
    restarts: int = 0
    last_fault: EngineExit | None = None
    file_sampling: SamplingDefaults = field(default_factory=SamplingDefaults)  # the file's own
    # Host RAM granted to the engine's KV host tier out of the node's budget (None: no
    # node budget, the spec's own figure).
    kv_host_cache_mb: int | None = None
    # Prompts admitted lately, as chain hashes: what the gateway routes follow-ups by.
    prefixes: PrefixSet = field(default_factory=lambda: PrefixSet(PREFIX_DIGEST_HASHES))
    # A model over several devices: each rank's device (main first; the CPU once per CPU
    # rank) and its MB there. Empty: ``device`` alone, with all of ``memory_mb``.
    ranks: tuple[Device, ...] = ()
    shares_mb: tuple[int, ...] = ()

    @property
    def id(self) -> str:
        return self.spec.id

    def memory_on(self, device_id: str) -> int:
        """MB this model holds on ``device_id`` (its ranks there summed)."""
        if not self.ranks:
            return self.memory_mb if device_id == self.device.id else 0
        return sum(
            mb for d, mb in zip(self.ranks, self.shares_mb, strict=True) if d.id == device_id
        )

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        """What a request's missing sampling fields take: models.toml's over the file's."""
        own = self.spec.sampling
        return own.over(self.file_sampling) if own else self.file_sampling

    def status(self) -> ModelStatus:
        max_batch = self.engine.info.max_batch if self.engine else self.spec.max_batch
        pids = self.engine.pids if self.engine else []
        fault = self.last_fault
        defaults = self.sampling_defaults
        return ModelStatus(
            id=self.id,
            state=self.state,
            spec=self.spec,
            devices=[d.id for d in self.ranks] or [self.device.id],
            memory_mb=self.memory_mb,
            device_memory_mb={d.id: self.memory_on(d.id) for d in self.ranks or (self.device,)},
            kv_host_cache_mb=self.kv_host_cache_mb,
            context_length=self.engine.info.context_length if self.engine else None,
            in_flight=min(self.in_flight, max_batch),
            queued=max(0, self.in_flight - max_batch),
            last_used=self.last_used,
            engine_pid=(pids[0] if len(pids) == 1 else pids) if pids else None,
            restarts=self.restarts,
            last_fault=(
                EngineFaultStatus(kind=fault.kind, signal=fault.signal, at=fault.at)
                if fault
                else None
            ),
            fallback=self.fallback,
            sampling_defaults=None if defaults.is_empty() else defaults,
            prefix_digest=self.prefixes.hashes(),
            attention=self.engine.info.attention if self.engine else None,
        )


@dataclass(frozen=True)
class PendingLoad:
    """A load under way: its spec, the task running it (every caller awaits this one)."""

    spec: ModelSpec
    task: asyncio.Task[LoadedModel]
    since: float = field(default_factory=time.time)

    def status(self) -> ModelStatus:
        """How ``/status`` shows a load still fetching its files: loading, on no device
        and counting no memory yet (the estimate comes with the files)."""
        return ModelStatus(
            id=self.spec.id,
            state=ModelState.LOADING,
            spec=self.spec,
            devices=[],
            memory_mb=0,
            context_length=None,
            in_flight=0,
            queued=0,
            last_used=self.since,
        )


@dataclass(frozen=True)
class ServingModel:
    """A ready model as request handlers hold it: its engine is never None, and a
    recovery that swaps the engine does not change the one a request is using."""

    loaded: LoadedModel
    engine: EngineHandle

    @property
    def id(self) -> str:
        return self.loaded.spec.id

    @property
    def spec(self) -> ModelSpec:
        return self.loaded.spec

    @property
    def metrics(self) -> NeuronMetrics | None:
        return self.loaded.metrics

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        return self.loaded.sampling_defaults

    def remember_prefix(self, chain: list[str]) -> None:
        """An admitted request's chain hashes: its prompt is now in this model's cache."""
        self.loaded.prefixes.add(chain)

    def is_current(self) -> bool:
        """Still the engine the model serves with (not faulted, reloaded or unloaded)."""
        return self.loaded.state is ModelState.READY and self.loaded.engine is self.engine


async def launch_engine_process(
    path: Path,
    spec: ModelSpec,
    device: Device,
    *,
    use_extra_buffer_types: bool,
    on_exit: Callable[[EngineExit], None],
    on_step: Callable[[int], None],
    kv_disk_dir: Path | None = None,
    kv_host_cache_mb: int | None = None,
) -> EngineHandle:
    return await EngineProcess.launch(
        path,
        spec,
        device.id,
        device.threads,
        use_extra_buffer_types=use_extra_buffer_types,
        on_exit=on_exit,
        on_step=on_step,
        kv_disk_dir=kv_disk_dir,
        kv_host_cache_mb=kv_host_cache_mb,
    )


@dataclass(frozen=True)
class ModelFiles:
    """How a spec becomes a running engine: fetch its files, size it, start it.

    The real functions by default; unit tests pass fakes (no files, no processes).
    """

    prepare: Callable[..., Path] = prepare_source
    estimate: Callable[[Path, ModelSpec], MemoryEstimate] = estimate_memory
    launch: Launcher = launch_engine_process
    sampling_defaults: Callable[[Path], SamplingDefaults] = read_sampling_defaults


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
        files: ModelFiles | None = None,
        watch_period_s: float = 0.25,
        kv_host_cache_mb: int | None = None,
    ) -> None:
        self._files = files or ModelFiles()
        self._host_cache_mb = kv_host_cache_mb  # the node's host-RAM budget for KV tiers
        self._devices = list(devices)
        # what each engine can do on each device, as this install was built (probed once)
        self.engine_support = engine_support(self._devices)
        self._engine_status = {
            device_id: {"gguf": support.gguf, "dense": support.dense}
            for device_id, support in self.engine_support.items()
        }
        self._cpu_tp_ranks = cpu_tp_ranks  # ranks tensor_parallel may use on a GPU-less node
        self._has_gpus = any(d.id != "cpu" for d in self._devices)
        self._budget_mb = memory_budget_mb
        self._deadline_s = step_deadline_s
        self._watch_period_s = watch_period_s
        self._metrics = metrics or NeuronMetrics()
        self._models: dict[str, LoadedModel] = {}
        self._lock = asyncio.Lock()  # loads, unloads and recoveries one at a time
        self._watchdog: asyncio.Task[None] | None = None
        self._recoveries: dict[str, asyncio.Task[None]] = {}
        # Why llama.cpp's extra buffer types are off for every "auto" load from now on: a
        # crash on them is this CPU's, not one model's, so one is enough to learn it.
        self._extra_buffer_types_crashed: str | None = None
        self._loads: dict[str, PendingLoad] = {}  # by model id, until the load ends
        self._metrics.watch_states(lambda: [(m.id, m.state.value) for m in self.models()])

    @property
    def metrics(self) -> NeuronMetrics:
        return self._metrics

    def start(self) -> None:
        """Start the watchdog; call from the app's lifespan."""
        self._watchdog = asyncio.create_task(self._watch(), name="neuron-watchdog")

    # -- reads -----------------------------------------------------------------

    def models(self) -> list[LoadedModel]:
        return list(self._models.values())

    def statuses(self) -> list[ModelStatus]:
        """Every model here, loads still fetching their files included (as ``loading``)."""
        fetching = [p.status() for p in self._loads.values() if p.spec.id not in self._models]
        return [model.status() for model in self._models.values()] + fetching

    def ready(self, model_id: str) -> ServingModel:
        """The model if it can serve now, else the error saying why not."""
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(model_id, known=list(self._models))
        if model.state in (ModelState.POISONED, ModelState.RECOVERING):
            raise ModelRecovering(model_id)
        if model.state is ModelState.LOADING or model.engine is None:
            raise Unavailable(f"The model '{model_id}' is still loading.", retry_after_s=2)
        return ServingModel(model, model.engine)

    def devices_status(self) -> list[DeviceStatus]:
        out = []
        for device in self._devices:
            reading = read_memory(device)
            out.append(
                DeviceStatus(
                    id=device.id,
                    name=device.name,
                    memory_total_mb=reading.total_mb,
                    memory_free_mb=reading.free_mb,
                    memory_budget_mb=self._budget_mb,
                    memory_used_by_models_mb=self._used_mb(device),
                    engines=self._engine_status[device.id],
                    tp_ranks=self._tp_ranks(device),
                )
            )
        return out

    # -- lifecycle ---------------------------------------------------------------

    async def load(self, spec: ModelSpec, devices: Sequence[str] = ()) -> LoadedModel:
        model, _ = await self.load_or_join(spec, devices)
        return model

    async def load_or_join(
        self, spec: ModelSpec, devices: Sequence[str] = ()
    ) -> tuple[LoadedModel, LoadOutcome]:
        """The model of ``spec`` once ready, and whether this call loaded it, joined a
        load already under way, or found it present. Which one is decided with no
        ``await`` before the load is registered, so two callers never both start it.
        ``devices``: where the gateway placed a multi-device model, main first (empty:
        this node picks); a join or a model present keeps the devices it has."""
        pending = self._loads.get(spec.id)
        if pending is not None and not pending.task.done():
            _same_spec(pending.spec, spec)
            self._metrics.load_joins.labels(spec.id).inc()
            log.info("load model=%s joined the load under way", spec.id)
            # shield: a caller giving up must not cancel the load the others wait on
            return await asyncio.shield(pending.task), "joined"
        existing = self._models.get(spec.id)
        if existing is not None:
            _same_spec(existing.spec, spec)
            return existing, "present"
        task = asyncio.create_task(self._load(spec, tuple(devices)), name=f"load-{spec.id}")
        self._loads[spec.id] = PendingLoad(spec, task)
        task.add_done_callback(lambda done: self._load_ended(spec.id, done))
        return await asyncio.shield(task), "loaded"

    def _load_ended(self, model_id: str, task: asyncio.Task[LoadedModel]) -> None:
        pending = self._loads.get(model_id)
        if pending is not None and pending.task is task:
            del self._loads[model_id]
        if not task.cancelled():
            task.exception()  # retrieved here: every caller may have left

    async def _load(self, spec: ModelSpec, asked: tuple[str, ...] = ()) -> LoadedModel:
        # Preflight (422 for what this node can never serve) and any download run before
        # the lock: a long download must not hold up other loads, unloads and recoveries.
        ranks = self._named_devices(spec, asked)
        path = await self._prepare(spec)
        async with self._lock:
            estimate = await asyncio.to_thread(self._files.estimate, path, spec)
            file_sampling = await asyncio.to_thread(self._files.sampling_defaults, path)
            shares = estimate.shares_mb or (estimate.total_mb,)
            if len(shares) > 1:
                ranks = ranks or self._pick_devices(len(shares), gguf=path.suffix == ".gguf")
            else:
                ranks = (self._pick_device(gguf=path.suffix == ".gguf"),)
            try:
                # under the lock and with no await before the model is registered: the
                # check and the claim on the memory are one step (per device it takes)
                needs: Counter[str] = Counter()
                for device, mb in zip(ranks, shares, strict=True):
                    needs[device.id] += mb
                for device in dict.fromkeys(ranks):
                    self._check_fits(device, needs[device.id], spec, count_free=True)
            except InsufficientMemory:
                self._metrics.model_loads.labels(spec.id, "refused").inc()
                raise
            device = ranks[0]
            model = LoadedModel(
                spec=spec,
                device=device,
                ranks=ranks if len(ranks) > 1 else (),
                shares_mb=tuple(shares) if len(ranks) > 1 else (),
                path=path,
                memory_mb=sum(shares),
                embedding_mb=estimate.embedding_mb,
                metrics=self._metrics,
                use_extra_buffer_types=self._extra_buffer_types_for(spec),
                fallback=self._fallback_for(spec),
                file_sampling=file_sampling,
                kv_host_cache_mb=self._host_grant(spec),
            )
            self._models[spec.id] = model  # counted against the budget while it loads
            started = time.perf_counter()
            try:
                model.engine = await self._start_engine(model)
            except BaseException:
                self._models.pop(spec.id, None)
                self._metrics.model_loads.labels(spec.id, "failed").inc()
                raise
            model.state = ModelState.READY
            self._metrics.model_loads.labels(spec.id, "ok").inc()
            log.info(
                "loaded model=%s device=%s memory_mb=%d pid=%s seconds=%.2f",
                spec.id,
                join_devices([d.id for d in ranks]),
                model.memory_mb,
                model.engine.pids[0],
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
            task = self._recoveries.pop(model_id, None)
            if task is not None:
                task.cancel()
            await self._stop_engine(model)
            log.info("unloaded model=%s", model_id)

    async def close(self) -> None:
        """Stop watching and recovering, and unload every model (their processes end)."""
        loads = [pending.task for pending in self._loads.values()]
        tasks = [t for t in (self._watchdog, *self._recoveries.values(), *loads) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for model_id in list(self._models):
            await self.unload(model_id)

    def count_embedding_context(self, serving: ServingModel) -> None:
        """Count the embedding context in the model's memory before the engine creates it;
        507 when the node's budget has no room left for it."""
        model = serving.loaded
        if model.embedding_counted:
            return
        on_main = model.memory_on(model.device.id) + model.embedding_mb
        self._check_fits(model.device, on_main, model.spec)
        model.memory_mb += model.embedding_mb
        if model.shares_mb:  # the embedding context lives on the main device
            model.shares_mb = (model.shares_mb[0] + model.embedding_mb, *model.shares_mb[1:])
        model.embedding_counted = True

    async def inject_fault(self, model_id: str, kind: str) -> None:
        """Testing only: the model's engine suffers ``kind`` (``kill`` at once, the others
        on its next decode step)."""
        if kind not in FAULT_KINDS:
            kinds = ", ".join(FAULT_KINDS)
            raise InvalidRequest(f"fault kind must be one of {kinds}", param="kind")
        self.ready(model_id).engine.inject_fault(kind)
        log.warning("fault injected model=%s kind=%s", model_id, kind)

    # -- engines ------------------------------------------------------------------------

    async def _start_engine(self, model: LoadedModel) -> EngineHandle:
        """A new engine process for ``model``, past its canary. With extra buffer types
        on ``auto``, a canary that crashes is retried once without them."""
        try:
            return await self._launch(model)
        except EngineLoadFailed as exc:
            crashed = exc.exit is not None and exc.exit.kind == "crash"
            if not (crashed and model.use_extra_buffer_types):
                raise
            if model.spec.extra_buffer_types != "auto":
                raise
            model.use_extra_buffer_types = False
            model.fallback = f"no extra buffer types after {exc.exit.signal} in canary"
            self._extra_buffer_types_crashed = f"{exc.exit.signal} in {model.id}'s canary"
            log.warning("model=%s load retried with safe settings: %s", model.id, model.fallback)
            return await self._launch(model)

    def _extra_buffer_types_for(self, spec: ModelSpec) -> bool:
        if spec.extra_buffer_types == "auto":
            return self._extra_buffer_types_crashed is None
        return spec.extra_buffer_types

    def _fallback_for(self, spec: ModelSpec) -> str | None:
        crashed = self._extra_buffer_types_crashed
        if spec.extra_buffer_types == "auto" and crashed is not None:
            return f"no extra buffer types: they crashed on this node ({crashed})"
        return None

    async def _launch(self, model: LoadedModel) -> EngineHandle:
        holder: list[EngineHandle] = []

        def on_exit(exit: EngineExit) -> None:
            if holder and model.engine is holder[0]:
                self._engine_exited(model, exit)

        def on_step(sequences: int) -> None:  # on the engine's reader thread
            self._metrics.batch_size.labels(model.id).observe(sequences)

        # several devices reach the engine as one comma-joined id, main first
        ids = join_devices(list(dict.fromkeys(d.id for d in model.ranks)))
        device = replace(model.device, id=ids) if "," in ids else model.device
        engine = await self._files.launch(
            model.path,
            model.spec,
            device,
            use_extra_buffer_types=model.use_extra_buffer_types,
            on_exit=on_exit,
            on_step=on_step,
            kv_host_cache_mb=model.kv_host_cache_mb,
        )
        holder.append(engine)
        return engine

    async def _stop_engine(self, model: LoadedModel) -> None:
        engine, model.engine = model.engine, None
        if engine is not None:
            await engine.close(timeout_s=self._deadline_s)

    # -- faults and recovery (on the event loop) ----------------------------------

    def _engine_exited(self, model: LoadedModel, exit: EngineExit) -> None:
        """The serving engine's process ended on its own: a fault."""
        model.last_fault = exit
        self._metrics.engine_faults.labels(model.id, exit.kind).inc()
        auto = model.spec.extra_buffer_types == "auto"
        if exit.kind == "crash" and model.use_extra_buffer_types and auto:
            # the canary cannot try every shape a request takes; a native crash while
            # serving on the optional layouts rebuilds without them
            model.use_extra_buffer_types = False
            model.fallback = f"no extra buffer types after {exit.signal} while serving"
            self._extra_buffer_types_crashed = f"{exit.signal} while {model.id} served"
            log.warning("model=%s recovers with safe settings: %s", model.id, model.fallback)
        self._poison(model, exit.detail)

    def _poison(self, model: LoadedModel, reason: str) -> None:
        if model.state is not ModelState.READY:
            return  # already poisoned or recovering, or still loading (its load fails)
        model.state = ModelState.POISONED
        log.error("model=%s poisoned: %s", model.id, reason)
        if model.id not in self._recoveries:
            task = asyncio.create_task(self._recover(model.id), name=f"recover-{model.id}")
            self._recoveries[model.id] = task
            task.add_done_callback(lambda _: self._recoveries.pop(model.id, None))

    async def _watch(self) -> None:
        """An engine silent past the deadline with work outstanding is hung: kill it,
        and its exit poisons the model like any other fault."""
        while True:
            await asyncio.sleep(self._watch_period_s)
            for model in list(self._models.values()):
                engine = model.engine
                ready = model.state is ModelState.READY and engine is not None
                if ready and engine.silent_for() > self._deadline_s:
                    log.error(
                        "model=%s engine pid=%s silent for %.1f s with work outstanding: killed",
                        model.id,
                        engine.pids[0],
                        engine.silent_for(),
                    )
                    engine.kill("hang")

    async def _recover(self, model_id: str) -> None:
        async with self._lock:
            model = self._models.get(model_id)
            if model is None or model.state is not ModelState.POISONED:
                return
            model.state = ModelState.RECOVERING
            started = time.perf_counter()
            old = model.engine
            if old is not None:
                old.kill()  # whatever is left of it (ranks included)
                await self._stop_engine(model)
            try:
                if not model.path.exists():
                    raise EngineFault(f"the model file {model.path} is gone")
                engine = await self._start_engine(model)
            except Exception as exc:
                self._models.pop(model_id, None)
                self._metrics.recoveries.labels(model_id, "failed").inc()
                log.error(
                    "recovery failed model=%s reason=%s detail=%r: unloaded; the next load "
                    "starts afresh",
                    model_id,
                    getattr(exc, "kind", type(exc).__name__),
                    str(exc),
                )
                return
            model.engine, model.state = engine, ModelState.READY
            model.restarts += 1
            model.prefixes.clear()  # a new engine starts with an empty cache
            self._metrics.recoveries.labels(model_id, "ok").inc()
            self._metrics.engine_restarts.labels(model_id).inc()
            log.info(
                "recovered model=%s device=%s pid=%s seconds=%.2f",
                model_id,
                model.device.id,
                engine.pids[0],
                time.perf_counter() - started,
            )

    # -- internals ---------------------------------------------------------------

    async def _prepare(self, spec: ModelSpec) -> Path:
        """The spec's source listed, preflighted and fetched: the local path to load."""
        gpus = sum(1 for d in self._devices if d.id != "cpu")
        room = self._pick_device()
        free_mb = read_memory(room).free_mb + self._used_mb(room)  # were ours all unloaded
        if self._budget_mb is not None:
            free_mb = min(free_mb, self._budget_mb)
        prepare_args: dict[str, int] = {}
        if spec.split != "none":  # only then: the fakes of older tests know no ``gpus``
            prepare_args["gpus"] = sum(
                1 for d in self._devices if d.id != "cpu" and self.engine_support[d.id].gguf_usable
            )
        return await asyncio.to_thread(
            self._files.prepare,
            spec,
            devices_available=gpus or self._cpu_tp_ranks,
            free_mb=free_mb,
            **prepare_args,
        )

    def _tp_ranks(self, device: Device) -> int:
        """Ranks of one multi-device model ``device`` may hold: a GPU one; the CPU of a
        GPU-less node its --cpu-tp-ranks; the CPU of a GPU node none (ranks there are
        all GPUs, ``engines/dense/tp.py``)."""
        if device.id != "cpu":
            return 1
        return 0 if self._has_gpus else self._cpu_tp_ranks

    def _named_devices(self, spec: ModelSpec, asked: tuple[str, ...]) -> tuple[Device, ...]:
        """The devices a gateway placed a multi-device model on, checked against this
        node (400 when they cannot be), or () for this node to pick."""
        if not asked:
            return ()
        known = {d.id: d for d in self._devices}
        unknown = [d for d in asked if d not in known]
        counts = Counter(asked)
        problem = None
        if len(asked) != spec.width:
            problem = f"{len(asked)} devices named for a model of {spec.width}"
        elif unknown:
            problem = f"no device {', '.join(unknown)} on this node"
        elif any(n > self._tp_ranks(known[d]) for d, n in counts.items() if n > 1 or d == "cpu"):
            problem = "a device named more often than it may hold ranks"
        if problem is not None:
            raise InvalidRequest(f"load of '{spec.id}' on {','.join(asked)}: {problem}")
        return tuple(known[d] for d in asked)

    def _pick_devices(self, width: int, gguf: bool) -> tuple[Device, ...]:
        """This node's own choice for a model over ``width`` devices (no gateway named
        them): the GPUs with most free memory, or the CPU once per rank on a GPU-less
        node. Preflight has checked there are enough."""
        gpus = [
            d
            for d in self._devices
            if d.id != "cpu" and (not gguf or self.engine_support[d.id].gguf_usable)
        ]
        if not gpus:
            return (self._devices[0],) * width
        ranked = sorted(gpus, key=lambda d: -read_memory(d).free_mb)[:width]
        return tuple(sorted(ranked, key=lambda d: d.id))  # llama.cpp and TP go in id order

    def _pick_device(self, gguf: bool = False) -> Device:
        # GPUs first (the CPU is the fallback), the one with most free memory; for GGUF
        # only GPUs this llama.cpp build can offload to (a CPU-only build runs on the CPU).
        gpus = [
            d
            for d in self._devices
            if d.id != "cpu" and (not gguf or self.engine_support[d.id].gguf_usable)
        ]
        if gpus:
            return max(gpus, key=lambda d: read_memory(d).free_mb)
        return self._devices[0]

    def _used_mb(self, device: Device, exclude: str | None = None) -> int:
        return sum(m.memory_on(device.id) for m in self._models.values() if m.id != exclude)

    def _host_grant(self, spec: ModelSpec) -> int | None:
        """The host RAM a new model's KV host tier may use: what its spec asks for, as
        far as the node's budget has room beside the models already loaded. First come,
        first served: a grant is not taken back from a running engine; it is returned
        when its model unloads."""
        if self._host_cache_mb is None:
            return None
        if not spec.prefix_cache:
            return 0
        granted = sum(m.kv_host_cache_mb or 0 for m in self._models.values())
        return max(0, min(spec.kv_host_cache_mb, self._host_cache_mb - granted))

    def _check_fits(
        self, device: Device, need_mb: int, spec: ModelSpec, *, count_free: bool = False
    ) -> None:
        """507 unless ``need_mb`` fits what ``device`` has left: the node's budget less
        the models counted on it and, with ``count_free`` (a new load), the memory the
        device has free now (the models there already hold theirs; a load under way
        cannot, loads being one at a time)."""
        left = None
        why = ""
        if self._budget_mb is not None:
            left = self._budget_mb - self._used_mb(device, exclude=spec.id)
            why = f" of the node's {self._budget_mb} MB budget"
        if count_free:
            free = read_memory(device).free_mb
            if left is None or free < left:
                left, why = free, " free"
        if left is not None and need_mb > left:
            raise InsufficientMemory(
                f"model '{spec.id}' needs about {need_mb} MB on {device.id} but only {left} MB"
                f"{why} is left",
                need_mb=need_mb,
                free_mb=max(0, left),
                device=device.id,
            )


def _estimate_from_headers(spec: ModelSpec) -> MemoryEstimate:
    """Blocking: the estimate of ``spec`` read from its files' headers (an ``hf:`` source's
    weights are not downloaded for it)."""
    with headers_of(spec) as path:
        engine_for(path)  # the same refusal a load would give for an unservable file
        return estimate_memory(path, spec)


def _same_spec(held: ModelSpec, asked: ModelSpec) -> None:
    """A second load of a model id must ask for what the first did."""
    if held.model_dump() != asked.model_dump():
        raise InvalidRequest(
            f"model '{asked.id}' is already loaded with a different spec; unload it first"
        )
