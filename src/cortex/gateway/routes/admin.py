"""Liveness, the API's description and fleet administration: ``/``, ``/health``,
``/openapi.json``, ``/fleet``, ``/fleet/load|unload``."""

from __future__ import annotations

import math

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cortex.errors import InvalidRequest
from cortex.gateway.openapi import openapi_json
from cortex.gateway.state import state_of
from cortex.gateway.views import catalogue_entries, replicas_view
from cortex.protocol.fleet import (
    DefragAnswer,
    EvictionView,
    FleetModel,
    FleetRequest,
    FleetView,
    GatewayHealth,
    LoadAnswer,
    NotReady,
    Ready,
    UnloadAnswer,
)
from cortex.protocol.parsing import parse_body


def _wire(
    answer: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON answer serialised by its ``protocol.fleet`` type, as ``/openapi.json`` says."""
    return Response(answer.model_dump_json(), status_code, headers, media_type="application/json")


async def root(request: Request) -> Response:
    # Claude Code probes HEAD / before its first request: answer fast.
    return JSONResponse({"status": "ok", "service": "cortex"})


async def health(request: Request) -> Response:
    fleet = state_of(request).fleet
    up = sum(1 for node in fleet.nodes.values() if node.up)
    return _wire(GatewayHealth(nodes_up=up, nodes=len(fleet.nodes)))


async def ready(request: Request) -> Response:
    """Readiness, for load balancers and orchestrators: 200 once some usable node has a
    model ready to serve, else 503 (``/health`` stays plain liveness)."""
    fleet = state_of(request).fleet
    serving = sorted(
        {m.id for n in fleet.nodes.values() if n.usable for m in n.models.values()
         if m.state == "ready"}
    )  # fmt: skip
    if serving:
        return _wire(Ready(models=serving))
    not_ready = NotReady(reason="no node is up with a model ready")
    return _wire(not_ready, status_code=503, headers={"Retry-After": "2"})


async def openapi(request: Request) -> Response:
    """The OpenAPI document of this API. Served without a key, as FastAPI serves its
    own: it describes the routes and their types, which are public (this repository),
    and holds nothing of this gateway's configuration or fleet; clients and tools
    (SDK generators, schemathesis) fetch it before they have a key to send."""
    return Response(openapi_json(), media_type="application/json")


async def fleet_view(request: Request) -> Response:
    state = state_of(request)
    state.keys.check(request)
    eviction = state.config.eviction
    view = FleetView(
        nodes=[node.view() for node in state.fleet.nodes.values()],
        models=[
            FleetModel(
                **dict(entry),
                requests_last_min=state.recent.rate_per_min(entry.id),
                replicas=replicas_view(state, entry.id),
            )
            for entry in catalogue_entries(state)
        ],
        requests_last_min=state.recent.rate_per_min(),
        eviction=EvictionView(
            strategy=eviction.strategy,
            idle_unload_after_s=eviction.idle_unload_after_s,
            defrag_after_cycles=eviction.defrag_after_cycles,
            cycles=state.scheduler.eviction_cycles,
        ),
    )
    return _wire(view)


async def fleet_stats(request: Request) -> Response:
    """The last minutes of requests per model, bucketed, for the ``/ui`` charts.

    Query: ``span_s`` (default 600, at most 900) and ``step_s`` (default 10)."""
    state = state_of(request)
    state.keys.check(request)
    try:
        span_s = float(request.query_params.get("span_s", 600))
        step_s = float(request.query_params.get("step_s", 10))
    except ValueError:
        span_s = step_s = math.nan
    if not (math.isfinite(span_s) and math.isfinite(step_s)) or span_s <= 0 or step_s <= 0:
        raise InvalidRequest("span_s and step_s must be positive numbers of seconds.")
    span_s, step_s = min(900.0, span_s), max(1.0, step_s)
    return JSONResponse(state.recent.series(span_s=span_s, step_s=step_s))


async def _model_and_node(request: Request) -> tuple[str, str | None]:
    body = parse_body(FleetRequest, await request.body())
    if body.node is not None and body.node not in state_of(request).fleet.nodes:
        raise InvalidRequest(f"Unknown node '{body.node}'.", param="node")
    return body.model, body.node


async def fleet_load(request: Request) -> Response:
    state = state_of(request)
    state.keys.check(request)
    name, node_name = await _model_and_node(request)
    model_id = state.scheduler.resolve(name)
    node = await state.scheduler.load(model_id, node_name)
    return _wire(LoadAnswer(model=model_id, node=node.name))


async def fleet_unload(request: Request) -> Response:
    state = state_of(request)
    state.keys.check(request)
    name, node_name = await _model_and_node(request)
    model_id = state.scheduler.resolve(name)
    nodes = await state.scheduler.unload(model_id, node_name)
    return _wire(UnloadAnswer(model=model_id, nodes=nodes))


async def fleet_defrag(request: Request) -> Response:
    """Re-pack now rather than after the next ``defrag_after_cycles`` evictions."""
    state = state_of(request)
    state.keys.check(request)
    return _wire(DefragAnswer(moved=await state.scheduler.defrag()))
