"""Anthropic dialect: ``/v1/messages`` and ``/v1/messages/count_tokens``.

Requests are translated to the OpenAI chat completions every neuron serves, and
answers translated back; errors come in Anthropic's envelope (see error_handlers).
"""

from __future__ import annotations

import json
from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from cortex.gateway.dispatch import Forward, Resolve, dispatch
from cortex.gateway.renderers import AnthropicRenderer
from cortex.protocol import anthropic as an
from cortex.protocol.neuron import TokenCount
from cortex.protocol.parsing import parse_body
from cortex.translate.requests import to_chat_request
from cortex.translate.responses import to_message

_CHAT = "/v1/chat/completions"


async def messages(request: Request) -> Response:
    return await dispatch(request, _message)


async def count_tokens(request: Request) -> Response:
    """Exact: the neuron renders the prompt with the model's own template and tokenizer."""
    return await dispatch(request, _token_count)


def _message(raw: bytes, resolve: Resolve) -> Forward:
    message = parse_body(an.MessagesRequest, raw)
    model_id = resolve(message.model)
    chat = to_chat_request(message, model=model_id)
    if not message.stream:
        return Forward(_CHAT, model_id, chat, answer=partial(_answer, message))
    chat["stream"] = True
    chat["stream_options"] = {"include_usage": True}  # output_tokens in message_delta
    stops = message.stop_sequences or []
    renderer = AnthropicRenderer(message.model, stops, message.max_tokens)
    return Forward(_CHAT, model_id, chat, renderer=renderer)


def _answer(message: an.MessagesRequest, completion: bytes) -> bytes:
    answer = to_message(
        json.loads(completion),
        model=message.model,
        stop_sequences=message.stop_sequences or [],
        max_tokens=message.max_tokens,
    )
    return answer.model_dump_json().encode()


def _token_count(raw: bytes, resolve: Resolve) -> Forward:
    counted = parse_body(an.CountTokensRequest, raw)
    model_id = resolve(counted.model)
    chat = to_chat_request(counted, model=model_id)
    return Forward("/tokenize", model_id, chat, answer=_input_tokens)


def _input_tokens(answer: bytes) -> bytes:
    count = TokenCount.model_validate_json(answer).count
    return json.dumps({"input_tokens": count}).encode()
