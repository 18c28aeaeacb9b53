"""Anthropic dialect: ``/v1/messages`` and ``/v1/messages/count_tokens``.

Requests are translated to the OpenAI chat completions every neuron serves, and
answers translated back; errors come in Anthropic's envelope (see error_handlers).
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cortex.gateway.affinity import session_key
from cortex.gateway.renderers import AnthropicRenderer
from cortex.gateway.routes.openai import FORWARDED_HEADERS, read_body
from cortex.gateway.state import state_of
from cortex.protocol import anthropic as an
from cortex.protocol.parsing import parse_body
from cortex.translate.requests import to_chat_request
from cortex.translate.responses import to_message

_CHAT = "/v1/chat/completions"


async def messages(request: Request) -> Response:
    state = state_of(request)
    state.keys.check(request)
    message = parse_body(an.MessagesRequest, await read_body(request, state))
    model_id = state.scheduler.resolve(message.model)
    chat = to_chat_request(message, model=model_id)
    if message.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # output_tokens in message_delta
    raw = json.dumps(chat, separators=(",", ":")).encode()
    headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
    holders = state.scheduler.holders(model_id)
    session = session_key(model_id, chat, request.headers) if len(holders) > 1 else None
    stops = message.stop_sequences or []
    if message.stream:
        renderer = AnthropicRenderer(message.model, stops)
        if not holders:
            return await state.proxy.open_stream_after_load(
                _CHAT, model_id, raw, headers, session, renderer
            )
        upstream = await state.proxy.open(_CHAT, model_id, raw, headers, session)
        return state.proxy.stream(upstream, renderer)
    upstream = await state.proxy.open(_CHAT, model_id, raw, headers, session)
    completion = json.loads(await state.proxy.read(upstream))
    answer = to_message(completion, model=message.model, stop_sequences=stops)
    return Response(
        answer.model_dump_json(),
        media_type="application/json",
        headers={"x-cortex-node": upstream.node.name},
    )


async def count_tokens(request: Request) -> Response:
    """Exact: the neuron renders the prompt with the model's own template and tokenizer."""
    state = state_of(request)
    state.keys.check(request)
    counted = parse_body(an.CountTokensRequest, await read_body(request, state))
    model_id = state.scheduler.resolve(counted.model)
    chat = to_chat_request(counted, model=model_id)
    raw = json.dumps(chat, separators=(",", ":")).encode()
    upstream = await state.proxy.open("/tokenize", model_id, raw, {})
    answer = json.loads(await state.proxy.read(upstream))
    return JSONResponse({"input_tokens": int(answer["count"])})
