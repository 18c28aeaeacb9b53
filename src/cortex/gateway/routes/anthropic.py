"""Anthropic dialect: ``/v1/messages`` and ``/v1/messages/count_tokens``.

Requests are translated to the OpenAI chat completions every neuron serves, and
answers translated back; errors come in Anthropic's envelope (see error_handlers).
"""

from __future__ import annotations

import json
from typing import Any, Generic, NamedTuple, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cortex.disconnect import unless_disconnected
from cortex.gateway.affinity import session_key
from cortex.gateway.recording import forwarded_headers
from cortex.gateway.renderers import AnthropicRenderer
from cortex.gateway.routes.openai import read_body, resolve_model
from cortex.gateway.state import GatewayState, state_of
from cortex.protocol import anthropic as an
from cortex.protocol.parsing import parse_body
from cortex.translate.requests import to_chat_request
from cortex.translate.responses import to_message

_CHAT = "/v1/chat/completions"


RequestT = TypeVar("RequestT", bound=an.CountTokensRequest)


class _Translated(NamedTuple, Generic[RequestT]):
    state: GatewayState
    parsed: RequestT
    model_id: str
    chat: dict[str, Any]


async def _translated(request: Request, kind: type[RequestT]) -> _Translated[RequestT]:
    """Checked key, parsed body, resolved model, and the OpenAI chat request it becomes."""
    state = state_of(request)
    state.keys.check(request)
    parsed = parse_body(kind, await read_body(request, state))
    model_id = resolve_model(state, parsed.model)
    return _Translated(state, parsed, model_id, to_chat_request(parsed, model=model_id))


def _encoded(chat: dict[str, Any]) -> bytes:
    return json.dumps(chat, separators=(",", ":")).encode()


async def messages(request: Request) -> Response:
    state, message, model_id, chat = await _translated(request, an.MessagesRequest)
    if message.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # output_tokens in message_delta
    raw = _encoded(chat)
    headers = forwarded_headers()
    holders = state.scheduler.holders(model_id)
    session = session_key(model_id, chat, request.headers) if len(holders) > 1 else None
    stops = message.stop_sequences or []
    if message.stream:
        renderer = AnthropicRenderer(message.model, stops, message.max_tokens)
        if not holders:
            return await state.proxy.open_stream_after_load(
                _CHAT, model_id, raw, headers, session, renderer
            )
        upstream = await state.proxy.open(_CHAT, model_id, raw, headers, session)
        return state.proxy.stream(upstream, renderer)
    fetched = state.proxy.fetch(_CHAT, model_id, raw, headers, session)
    node, data = await unless_disconnected(request, fetched)
    answer = to_message(
        json.loads(data), model=message.model, stop_sequences=stops, max_tokens=message.max_tokens
    )
    return Response(
        answer.model_dump_json(),
        media_type="application/json",
        headers={"x-cortex-node": node.name},
    )


async def count_tokens(request: Request) -> Response:
    """Exact: the neuron renders the prompt with the model's own template and tokenizer."""
    state, _, model_id, chat = await _translated(request, an.CountTokensRequest)
    _, data = await state.proxy.fetch("/tokenize", model_id, _encoded(chat), {})
    return JSONResponse({"input_tokens": int(json.loads(data)["count"])})
