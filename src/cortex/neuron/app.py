"""``create_app(settings)``: the neuron's ASGI app; its lifespan owns workers and models."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware

from cortex.error_handlers import error_handlers
from cortex.errors import CortexError
from cortex.neuron.auth import RequireToken
from cortex.neuron.metrics import NeuronMetrics
from cortex.neuron.routes import DEBUG_ROUTES, ROUTES
from cortex.neuron.runtime import devices
from cortex.neuron.runtime.manager import ModelFiles, ModelManager, launch_engine_process
from cortex.neuron.settings import NeuronSettings
from cortex.request_ids import RequestIds

log = logging.getLogger("cortex.neuron")


def host_cache_budget_mb(settings: NeuronSettings) -> int:
    """The node's host-RAM budget for KV host tiers: as set, else a tenth of the RAM
    available now (the rest is for models on a CPU node, and for everything else)."""
    if settings.kv_host_cache_mb is not None:
        return settings.kv_host_cache_mb
    return devices.host_memory().free_mb // 10


def create_app(settings: NeuronSettings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        found = devices.discover()
        metrics = NeuronMetrics()
        manager = ModelManager(
            found,
            settings.memory_budget_mb,
            step_deadline_s=settings.step_deadline_s,
            metrics=metrics,
            cpu_tp_ranks=settings.cpu_tp_ranks,
            kv_host_cache_mb=host_cache_budget_mb(settings),
            files=ModelFiles(
                launch=functools.partial(launch_engine_process, kv_disk_dir=settings.kv_cache_dir)
            ),
        )
        manager.start()
        app.state.settings = settings
        app.state.manager = manager
        app.state.metrics = metrics
        support = manager.engine_support
        for device in found:
            engines = support[device.id]
            log.info(
                "device id=%s name=%r memory_mb=%d gguf=%s dense=%s",
                device.id,
                device.name,
                device.memory_total_mb,
                engines.gguf,
                engines.dense,
            )
            if not engines.gguf_usable:
                log.warning(
                    "device %s: this llama.cpp is a CPU-only build and cannot use it; GGUF "
                    "models will not be placed there. To use it, %s",
                    device.id,
                    devices.REBUILD_HINT,
                )
        for spec in settings.load:
            try:
                await manager.load(spec)
            except CortexError as exc:
                log.error(
                    "start-up load failed model=%s reason=%s detail=%r",
                    spec.id,
                    exc.reason,  # a preflight rejection's own kind, e.g. gguf_tensor_parallel
                    exc.message,
                )
        try:
            yield
        finally:
            await manager.close()

    routes = ROUTES + (DEBUG_ROUTES if settings.enable_fault_injection else [])
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=error_handlers(log),
        middleware=[Middleware(RequireToken, token=settings.token), Middleware(RequestIds)],
    )
