"""OpenAI dialect: ``/v1/chat/completions`` and ``/v1/models``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cortex.errors import InvalidRequest, RequestTooLarge
from cortex.gateway.state import GatewayState, state_of
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
    upstream = await state.proxy.open(path, body, headers)
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
    fleet, catalogue = state.fleet, state.catalogue
    loaded = fleet.loaded_ids()
    cards = []
    for model_id in catalogue.ids(loaded):
        profile = catalogue.profiles.get(model_id)
        cards.append(
            oa.ModelCard(
                id=model_id,
                owned_by="cortex",
                loaded_on=fleet.loaded_on(model_id),
                aliases=profile.aliases if profile else [],
                pinned=profile.pinned if profile else False,
            )
        )
    return JSONResponse(oa.ModelList(data=cards).model_dump())
