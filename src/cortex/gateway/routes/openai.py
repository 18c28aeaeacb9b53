"""OpenAI dialect: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and
``/v1/models``. The neuron speaks it too: bodies and answers pass through as they are."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cortex.errors import InvalidRequest
from cortex.gateway.auth import identity_of
from cortex.gateway.dispatch import Forward, Prepare, Resolve, dispatch
from cortex.gateway.limits import may_use
from cortex.gateway.renderers import OpenAIRenderer
from cortex.gateway.state import state_of
from cortex.gateway.views import anthropic_model_list, model_entries
from cortex.protocol import openai as oa
from cortex.protocol.parsing import parse_json

_RENDERER = OpenAIRenderer()


def _passed_through(path: str, required: str) -> Prepare:
    """The request for ``path``, checked only for what routing needs (the neuron
    validates it whole) and forwarded as sent unless its model is an alias."""

    def prepare(raw: bytes, resolve: Resolve) -> Forward:
        body = parse_json(raw)
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' is required and must be a string.", param="model")
        if not body.get(required):
            raise InvalidRequest(f"'{required}' is required.", param=required)
        model_id = resolve(model)
        forwarded: bytes | None = raw
        if model_id != model:  # an alias: the neuron knows the model by its id
            body, forwarded = {**body, "model": model_id}, None
        renderer = _RENDERER if body.get("stream") else None
        return Forward(path, model_id, body, forwarded, renderer)

    return prepare


_CHAT = _passed_through("/v1/chat/completions", "messages")
_COMPLETIONS = _passed_through("/v1/completions", "prompt")
_EMBEDDINGS = _passed_through("/v1/embeddings", "input")


async def chat_completions(request: Request) -> Response:
    return await dispatch(request, _CHAT)


async def completions(request: Request) -> Response:
    return await dispatch(request, _COMPLETIONS)


async def embeddings(request: Request) -> Response:
    return await dispatch(request, _EMBEDDINGS)


async def list_models(request: Request) -> Response:
    state = state_of(request)
    state.keys.check(request)
    globs = identity_of(request).models  # a key sees only the models it may use
    entries = [e for e in model_entries(state) if may_use(globs, e["id"], *e["aliases"])]
    if "anthropic-version" in request.headers:
        return JSONResponse(anthropic_model_list(entries).model_dump())
    cards = [oa.ModelCard(owned_by="cortex", **entry) for entry in entries]
    return JSONResponse(oa.ModelList(data=cards).model_dump())
