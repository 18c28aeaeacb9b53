"""OpenAI dialect: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and
``/v1/models``."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cortex.disconnect import unless_disconnected
from cortex.errors import InvalidRequest, RequestTooLarge
from cortex.gateway.affinity import session_key
from cortex.gateway.recording import forwarded_headers, record
from cortex.gateway.renderers import OpenAIRenderer
from cortex.gateway.state import GatewayState, state_of
from cortex.gateway.views import anthropic_model_list, model_entries
from cortex.protocol import openai as oa
from cortex.protocol.parsing import parse_json

_RENDERER = OpenAIRenderer()


def resolve_model(state: GatewayState, name: str) -> str:
    """The model id a client's name (id or alias) stands for, noted on the request's record."""
    model_id = state.scheduler.resolve(name)
    current = record()
    if current is not None:
        current.model = model_id
    return model_id


async def read_body(request: Request, state: GatewayState) -> bytes:
    """The request body, refused past the configured size before it is all read."""
    limit = state.config.gateway.request_body_limit_mb * 2**20
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise RequestTooLarge(f"The request body is over the {limit // 2**20} MB limit.")
    raw = await request.body()
    if len(raw) > limit:
        raise RequestTooLarge(f"The request body is over the {limit // 2**20} MB limit.")
    return raw


async def read_json_object(request: Request, state: GatewayState) -> tuple[bytes, dict[str, Any]]:
    """The raw body (forwarded as is when nothing in it changes) and its parsed object."""
    raw = await read_body(request, state)
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    return raw, body


async def _forward(request: Request, path: str, required: str) -> Response:
    state = state_of(request)
    state.keys.check(request)
    raw, body = await read_json_object(request, state)
    # Full validation happens once, on the neuron; here only what routing needs.
    if not body.get(required):
        raise InvalidRequest(f"'{required}' is required.", param=required)
    headers = forwarded_headers()
    model_id = resolve_model(state, body["model"])
    if model_id != body["model"]:  # an alias: the neuron knows the model by its id
        raw = json.dumps({**body, "model": model_id}, separators=(",", ":")).encode()
    # affinity only matters where there is a choice of node
    holders = state.scheduler.holders(model_id)
    session = session_key(model_id, body, request.headers) if len(holders) > 1 else None
    if body.get("stream"):
        if not holders:
            return await state.proxy.open_stream_after_load(
                path, model_id, raw, headers, session, _RENDERER
            )
        upstream = await state.proxy.open(path, model_id, raw, headers, session)
        return state.proxy.stream(upstream, _RENDERER)
    answer = state.proxy.fetch(path, model_id, raw, headers, session)
    node, data = await unless_disconnected(request, answer)
    return Response(data, media_type="application/json", headers={"x-cortex-node": node.name})


async def chat_completions(request: Request) -> Response:
    return await _forward(request, "/v1/chat/completions", "messages")


async def completions(request: Request) -> Response:
    return await _forward(request, "/v1/completions", "prompt")


async def embeddings(request: Request) -> Response:
    return await _forward(request, "/v1/embeddings", "input")


async def list_models(request: Request) -> Response:
    state = state_of(request)
    state.keys.check(request)
    if "anthropic-version" in request.headers:
        return JSONResponse(anthropic_model_list(model_entries(state)))
    cards = [oa.ModelCard(owned_by="cortex", **entry) for entry in model_entries(state)]
    return JSONResponse(oa.ModelList(data=cards).model_dump())
