"""OpenAI dialect: ``/v1/chat/completions`` and ``/v1/models``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cortex.errors import InvalidRequest, RequestTooLarge
from cortex.gateway.affinity import session_key
from cortex.gateway.state import GatewayState, state_of
from cortex.gateway.views import model_entries
from cortex.protocol import openai as oa
from cortex.protocol.parsing import parse_json

_FORWARDED_HEADERS = ("x-request-id",)


async def read_json_object(request: Request, state: GatewayState) -> dict[str, Any]:
    limit = state.config.gateway.request_body_limit_mb * 2**20
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise RequestTooLarge(f"The request body is over the {limit // 2**20} MB limit.")
    raw = await request.body()
    if len(raw) > limit:
        raise RequestTooLarge(f"The request body is over the {limit // 2**20} MB limit.")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    return body


async def _forward(request: Request, path: str, required: str) -> Response:
    state = state_of(request)
    state.keys.check(request)
    body = await read_json_object(request, state)
    # Full validation happens once, on the neuron; here only what routing needs.
    if not body.get(required):
        raise InvalidRequest(f"'{required}' is required.", param=required)
    headers = {h: request.headers[h] for h in _FORWARDED_HEADERS if h in request.headers}
    model_id = state.scheduler.resolve(body["model"])
    session = session_key(model_id, body, request.headers)
    if body.get("stream") and not state.scheduler.is_ready(model_id):
        return await state.proxy.open_stream_after_load(path, model_id, body, headers, session)
    upstream = await state.proxy.open(path, model_id, body, headers, session)
    if body.get("stream"):
        return state.proxy.stream(upstream)
    return await state.proxy.complete(upstream)


async def chat_completions(request: Request) -> Response:
    return await _forward(request, "/v1/chat/completions", "messages")


async def completions(request: Request) -> Response:
    return await _forward(request, "/v1/completions", "prompt")


async def list_models(request: Request) -> Response:
    state = state_of(request)
    state.keys.check(request)
    cards = [oa.ModelCard(owned_by="cortex", **entry) for entry in model_entries(state)]
    return JSONResponse(oa.ModelList(data=cards).model_dump())
