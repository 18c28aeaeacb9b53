"""OpenAI Responses API: ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}``,
``GET /v1/responses/{id}/input_items``.

A request is translated to the chat completion every neuron serves and takes the one
dispatch path (keys, routing, cold loads, failover, metrics); the answer is translated
back, whole or as Responses stream events (``ResponsesRenderer``). With ``store`` (the
default, as on OpenAI) the final response and the conversation it answered are kept in
the gateway database (``response_store``), for retrieval and ``previous_response_id``.
Errors come in OpenAI's envelope; docs/responses.md says what differs from OpenAI.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cortex.errors import CortexError
from cortex.gateway.dispatch import Forward, Resolve, dispatch, read_request
from cortex.gateway.renderers import ResponsesRenderer
from cortex.gateway.response_store import ResponseStore, Stored
from cortex.gateway.state import state_of
from cortex.protocol import openai_responses as rs
from cortex.protocol.parsing import parse_body
from cortex.translate import openai_responses as tr
from cortex.translate.openai_responses_stream import ResponseStream

_CHAT = "/v1/chat/completions"


class ResponseNotFound(CortexError):
    status = 404
    kind = "not_found"

    def __init__(self, response_id: str, *, param: str | None = None) -> None:
        super().__init__(
            f"No response with id '{response_id}' is stored here (never stored with "
            "store: true, deleted, or expired).",
            param=param,
            code="response_not_found",
        )


async def create(request: Request) -> Response:
    state = state_of(request)
    raw = await read_request(request, state)
    asked = parse_body(rs.ResponsesRequest, raw)
    history: list[dict[str, Any]] = []
    if asked.previous_response_id:
        previous = await state.responses.load(asked.previous_response_id)
        if previous is None:
            raise ResponseNotFound(asked.previous_response_id, param="previous_response_id")
        history = previous.conversation()
    items = [*history, *tr.input_items(asked)]
    store = state.responses if asked.store else None

    def prepare(raw: bytes, resolve: Resolve) -> Forward:
        model_id = resolve(asked.model)
        chat = tr.to_chat_request(asked, items, model=model_id)
        base = tr.echo(asked, response_id=rs.new_id("resp"))
        names = tr.namespaces(asked.tools)
        keep = _keeper(store, items)
        if not asked.stream:
            return Forward(
                _CHAT, model_id, chat, answer=lambda answer: _whole(answer, base, names, keep)
            )
        renderer = ResponsesRenderer(ResponseStream(base, names), on_final=keep)
        return Forward(_CHAT, model_id, chat, renderer=renderer)

    try:
        return await dispatch(request, prepare, raw)
    except CortexError as error:
        if error.code == "context_length_exceeded":  # the neuron names its chat field
            error.param = "input"
        raise


Keep = Callable[[rs.Response], None]


def _keeper(store: ResponseStore | None, items: list[dict[str, Any]]) -> Keep | None:
    if store is None:
        return None
    return lambda response: store.save_later(response, items)


def _whole(answer: bytes, base: rs.Response, names: dict[str, str], keep: Keep | None) -> bytes:
    response = tr.to_response(json.loads(answer), base, names)
    if keep is not None:
        keep(response)
    return response.model_dump_json().encode()


async def stored(request: Request) -> Response:
    """``GET`` a stored response, or ``DELETE`` it."""
    if request.method == "DELETE":
        return await _delete(request)
    return _json((await _stored(request)).response)


async def _delete(request: Request) -> Response:
    state = state_of(request)
    state.keys.check(request)
    response_id = request.path_params["response_id"]
    if not await state.responses.delete(response_id):
        raise ResponseNotFound(response_id)
    return _json(rs.Deleted(id=response_id))


async def input_items(request: Request) -> Response:
    """The items the response answered, newest first unless ``order=asc``, as OpenAI
    lists them; ids are minted from their place where the client sent none."""
    stored = await _stored(request)
    listed = [
        {**item, "id": item.get("id") or tr.item_id("item", stored.response.id, index)}
        for index, item in enumerate(stored.items)
    ]
    if request.query_params.get("order", "desc") != "asc":
        listed.reverse()
    first, last = (listed[0]["id"], listed[-1]["id"]) if listed else (None, None)
    return _json(rs.InputItemList(data=listed, first_id=first, last_id=last))


async def _stored(request: Request) -> Stored:
    state = state_of(request)
    state.keys.check(request)
    response_id = request.path_params["response_id"]
    stored = await state.responses.load(response_id)
    if stored is None:
        raise ResponseNotFound(response_id)
    return stored


def _json(answer: Any) -> Response:
    return Response(answer.model_dump_json(), media_type="application/json")
