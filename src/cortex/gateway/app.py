"""``create_app(config, models)``: the gateway's ASGI app; its lifespan owns the
HTTP session to the neurons, the neuron clients and the poller.

The clients come from one place, the ``clients`` factory (default: HTTP over the
pooled session), so a test can run the whole gateway against in-memory neurons."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import aiohttp
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from cortex.config import GatewayConfig, ModelsConfig
from cortex.error_handlers import error_handlers
from cortex.errors import Unavailable
from cortex.gateway.auth import ApiKeys, AuthGate
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.counters import MinuteCounter
from cortex.gateway.database import Database
from cortex.gateway.fleet import Fleet
from cortex.gateway.keys import KeyStore
from cortex.gateway.limits import Limiter
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.neuron_client import ClientFactory, HttpNeuronClient
from cortex.gateway.poller import Poller
from cortex.gateway.proxy import Proxy
from cortex.gateway.recording import RequestRecorder
from cortex.gateway.response_store import ResponseStore
from cortex.gateway.routes import admin, anthropic, ollama, openai, responses, ui
from cortex.gateway.routes import keys as key_admin
from cortex.gateway.scheduler import Scheduler
from cortex.gateway.state import GatewayState
from cortex.gateway.stats import RecentRequests
from cortex.gateway.usage import UsageLedger

log = logging.getLogger("cortex.gateway")

ROUTES = [
    # the API routes first: Starlette tries routes in order, on every request
    Route("/v1/chat/completions", openai.chat_completions, methods=["POST"]),
    Route("/v1/completions", openai.completions, methods=["POST"]),
    Route("/v1/embeddings", openai.embeddings, methods=["POST"]),
    Route("/v1/messages", anthropic.messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", anthropic.count_tokens, methods=["POST"]),
    Route("/v1/models", openai.list_models, methods=["GET"]),
    # OpenAI's Responses API (docs/responses.md)
    Route("/v1/responses", responses.create, methods=["POST"]),
    Route("/v1/responses/{response_id}", responses.stored, methods=["GET", "DELETE"]),
    Route("/v1/responses/{response_id}/input_items", responses.input_items, methods=["GET"]),
    # Ollama's API (docs/ollama.md)
    Route("/api/chat", ollama.chat, methods=["POST"]),
    Route("/api/generate", ollama.generate, methods=["POST"]),
    Route("/api/embed", ollama.embed, methods=["POST"]),
    Route("/api/embeddings", ollama.embeddings, methods=["POST"]),
    Route("/api/tags", ollama.tags, methods=["GET"]),
    Route("/api/ps", ollama.running, methods=["GET"]),
    Route("/api/show", ollama.show, methods=["POST"]),
    Route("/api/pull", ollama.pull, methods=["POST"]),
    Route("/api/delete", ollama.delete, methods=["DELETE"]),
    Route("/api/version", ollama.version, methods=["GET"]),
    Route("/", admin.root, methods=["GET", "HEAD"]),
    Route("/health", admin.health, methods=["GET"]),
    Route("/ready", admin.ready, methods=["GET"]),
    Route("/openapi.json", admin.openapi, methods=["GET"]),
    Route("/fleet", admin.fleet_view, methods=["GET"]),
    Route("/fleet/load", admin.fleet_load, methods=["POST"]),
    Route("/fleet/unload", admin.fleet_unload, methods=["POST"]),
    Route("/fleet/defrag", admin.fleet_defrag, methods=["POST"]),
    Route("/fleet/stats", admin.fleet_stats, methods=["GET"]),
    Route("/admin/keys", key_admin.keys, methods=["GET", "POST"]),
    Route("/admin/keys/{key_id}", key_admin.key, methods=["GET", "PATCH", "DELETE"]),
    Route("/admin/usage", key_admin.usage, methods=["GET"]),
    Route("/ui", ui.page, methods=["GET"]),
    Route("/ui/{asset}", ui.asset, methods=["GET"]),
]


def create_app(
    config: GatewayConfig,
    models: ModelsConfig,
    registry: CollectorRegistry | None = None,
    *,
    clients: ClientFactory | None = None,
    supervised: Mapping[str, Callable[[], int]] | None = None,
) -> Starlette:
    """The gateway. ``clients`` makes each neuron's client (tests pass fakes);
    ``supervised`` reads the restart count of neurons this process runs and restarts."""
    metrics = GatewayMetrics(registry or CollectorRegistry())
    recent = RecentRequests()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # One pooled session for every neuron; no total timeout (streams last long),
        # but a connect timeout so a dead host fails over quickly.
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
        )
        database = Database.open(config.gateway.database_url, config.gateway.state_dir)
        key_store, usage = KeyStore(database), UsageLedger(database)
        await key_store.migrate()
        await usage.migrate()
        counter = None if database.is_sqlite else MinuteCounter(database)
        if counter is not None:  # PostgreSQL: rpm counted across the gateways sharing it
            await counter.migrate()
        limiter = Limiter(counter.take if counter else None, usage.spent)
        stored = ResponseStore(
            database,
            ttl_s=config.gateway.responses_ttl_s,
            max_stored=config.gateway.responses_max_stored,
            max_bytes=config.gateway.responses_max_mb << 20,
        )
        await stored.migrate()
        fleet = Fleet(config.neurons, config.gateway.down_after_misses)
        for name, restarts in (supervised or {}).items():
            fleet.nodes[name].restarts = restarts
        make_client = clients or (lambda endpoint: HttpNeuronClient(endpoint, session))
        neurons = {n.name: make_client(n) for n in config.neurons}
        poller = Poller(fleet, neurons, config.gateway.poll_interval_s, metrics)
        catalogue = Catalogue(models.models)
        scheduler = Scheduler(
            fleet, catalogue, neurons, config.eviction, metrics, refresh=poller.poll_node
        )
        proxy = Proxy(
            scheduler,
            fleet,
            neurons,
            poller,
            config.gateway.stream_keepalive_s,
            config.gateway.upstream_idle_timeout_s,
        )
        poller.on_node_down = proxy.cut_node
        # the queue replicas are scaled by, and who to admit once a copy adds places
        scheduler.replicas.waiting = proxy.admission.waiting
        scheduler.replicas.places_grew = proxy.admission.places_grew
        app.state.gateway = GatewayState(
            config=config,
            fleet=fleet,
            catalogue=catalogue,
            scheduler=scheduler,
            proxy=proxy,
            keys=ApiKeys(
                config.gateway.api_keys,
                admin_token=admin_token(config),
                store=key_store,
                protect_ui=config.gateway.protect_ui,
            ),
            metrics=metrics,
            recent=recent,
            database=database,
            limiter=limiter,
            usage=usage,
            responses=stored,
        )
        tasks: list[asyncio.Task[None]] = []

        def node_up(name: str) -> None:  # a node (back) up: its pinned models load there
            tasks.append(asyncio.create_task(scheduler.warm_pinned(), name=f"warm-{name}"))

        poller.on_node_up = node_up
        await poller.poll_once()  # route from the first request on
        tasks += [
            asyncio.create_task(poller.run(), name="poller"),
            asyncio.create_task(scheduler.warm_pinned(), name="warm-pinned"),
            asyncio.create_task(scheduler.run_housekeeping(), name="housekeeping"),
            asyncio.create_task(usage.run(), name="usage-flush"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await scheduler.close()
            await session.close()
            await usage.close()  # the last requests' usage, after they have all ended
            await stored.close()
            await database.close()

    return Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers=error_handlers(log),
        # the recorder outermost: it opens the record the gate then fills in
        middleware=[
            Middleware(RequestRecorder, metrics=metrics, recent=recent),
            Middleware(AuthGate),
        ],
    )


def admin_token(config: GatewayConfig) -> str | None:
    """``[gateway] admin_token``, else ``$CORTEX_ADMIN_TOKEN``."""
    return config.gateway.admin_token or os.environ.get("CORTEX_ADMIN_TOKEN") or None


# How long after the grace period uvicorn keeps the connections open: enough for the
# error events that end the streams to be written.
SHUTDOWN_FLUSH_S = 2.0


def begin_shutdown(app: Starlette) -> None:
    """A shutdown began (SIGTERM, Ctrl-C): uvicorn has stopped accepting. Answers in
    flight get ``shutdown_grace_s`` to finish; then each stream ends with an error event
    and each waiting request with a 503, so clients know to retry rather than see a cut."""
    state: GatewayState | None = getattr(app.state, "gateway", None)
    if state is None:  # still starting up
        return
    grace = state.config.gateway.shutdown_grace_s
    log.warning("shutting down: answers in flight get %.0f s to finish", grace)
    error = Unavailable(
        "The gateway is shutting down; retry shortly.",
        code="gateway_shutting_down",
        retry_after_s=2,
    )
    asyncio.get_running_loop().call_later(grace, state.proxy.end_all, error)
