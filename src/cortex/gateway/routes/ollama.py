"""Ollama's API on the gateway's port: ``/api/chat``, ``/api/generate``, ``/api/embed``,
``/api/embeddings``, ``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/pull``,
``/api/delete``, ``/api/version``.

Generations and embeddings take the one dispatch path of every dialect (keys,
routing, cold loads, failover, metrics), translated by ``translate.ollama``; streams
are NDJSON lines (``OllamaRenderer``). Errors are ``{"error": "..."}`` (see
error_handlers); docs/ollama.md says what differs from Ollama.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cortex.errors import CortexError, InvalidRequest
from cortex.gateway.auth import identity_of
from cortex.gateway.dispatch import Forward, Resolve, dispatch, read_request, resolve_model
from cortex.gateway.fleet import Node
from cortex.gateway.limits import may_use
from cortex.gateway.renderers import OllamaRenderer, measured
from cortex.gateway.state import GatewayState, state_of
from cortex.gateway.views import ollama_running, ollama_show, ollama_tags
from cortex.protocol import ollama as ol
from cortex.protocol.parsing import parse_body
from cortex.protocol.sse import SSE_HEADERS
from cortex.translate import ollama as tr

_NDJSON = "application/x-ndjson"
_EMBEDDINGS = "/v1/embeddings"


def _wire(answer: BaseModel) -> Response:
    return Response(answer.model_dump_json(), media_type="application/json")


async def version(request: Request) -> Response:
    state_of(request).keys.check(request)
    return _wire(ol.Version())


async def tags(request: Request) -> Response:
    state = state_of(request)
    state.keys.check(request)
    tags = ollama_tags(state)
    globs = identity_of(request).models  # a key sees only the models it may use
    tags.models = [m for m in tags.models if may_use(globs, m.name)]
    return _wire(tags)


async def running(request: Request) -> Response:
    """``/api/ps``: one entry per (node, model) loaded, with when it may be unloaded."""
    state = state_of(request)
    state.keys.check(request)
    return _wire(ollama_running(state))


async def show(request: Request) -> Response:
    state = state_of(request)
    named = await _model_request(request, state)
    return _wire(ollama_show(state, resolve_model(state, named.model_name())))


async def chat(request: Request) -> Response:
    state = state_of(request)
    raw = await read_request(request, state)
    asked = parse_body(ol.ChatRequest, raw)
    if not asked.messages:  # Ollama's way to load (or, with keep_alive 0, unload) a model
        return await _load_or_unload(state, asked)
    _keep_alive(state, asked)
    return await dispatch(request, partial(_chat, asked), raw)


async def generate(request: Request) -> Response:
    state = state_of(request)
    raw = await read_request(request, state)
    asked = parse_body(ol.GenerateRequest, raw)
    if not asked.prompt and not asked.system:
        return await _load_or_unload(state, asked)
    _keep_alive(state, asked)
    return await dispatch(request, partial(_generate, asked), raw)


def _keep_alive(state: GatewayState, asked: ol.ChatRequest | ol.GenerateRequest) -> None:
    """The model's idle-unload time, as the request asks (or the default, as in Ollama
    where each request sets it); 0 unloads it once this answer is done."""
    seconds = tr.keep_alive_s(asked.keep_alive)
    state.scheduler.keep_alive_for(resolve_model(state, asked.model), seconds)


async def _load_or_unload(
    state: GatewayState, asked: ol.ChatRequest | ol.GenerateRequest
) -> Response:
    """An empty prompt: load the model (``done_reason: "load"``), or with ``keep_alive:
    0`` unload it everywhere now (``"unload"``), as ``ollama run`` and ``ollama stop`` do."""
    model_id = resolve_model(state, asked.model)  # noted on the request's record
    seconds = tr.keep_alive_s(asked.keep_alive)
    if seconds == 0:
        await state.scheduler.unload(model_id)
        state.scheduler.keep_alive_for(model_id, None)
        reason = "unload"
    else:
        await state.scheduler.load(model_id)
        state.scheduler.keep_alive_for(model_id, seconds)
        reason = "load"
    head = {"model": asked.model, "created_at": ol.created_at(), "done": True,
            "done_reason": reason}  # fmt: skip
    if isinstance(asked, ol.ChatRequest):
        answer: BaseModel = ol.ChatChunk(**head, message=ol.OutMessage())
    else:
        answer = ol.GenerateChunk(**head)
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")


async def embed(request: Request) -> Response:
    return await dispatch(request, _embed)


async def embeddings(request: Request) -> Response:
    return await dispatch(request, _embeddings)


def _chat(asked: ol.ChatRequest, raw: bytes, resolve: Resolve) -> Forward:
    model_id = resolve(asked.model)
    body = tr.chat_body(asked, model_id)
    return _generation(tr.CHAT_PATH, model_id, body, asked, "chat")


def _generate(asked: ol.GenerateRequest, raw: bytes, resolve: Resolve) -> Forward:
    model_id = resolve(asked.model)
    path, body = tr.generate_body(asked, model_id)
    return _generation(path, model_id, body, asked, "generate")


def _generation(
    path: str,
    model_id: str,
    body: dict[str, Any],
    asked: ol.ChatRequest | ol.GenerateRequest,
    kind: tr.Kind,
) -> Forward:
    if asked.stream:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        return Forward(
            path, model_id, body, renderer=OllamaRenderer(asked.model, kind, asked.think)
        )
    return Forward(path, model_id, body, answer=partial(_answer, asked, kind))


def _answer(asked: ol.ChatRequest | ol.GenerateRequest, kind: tr.Kind, completion: bytes) -> bytes:
    convert = tr.chat_answer if kind == "chat" else tr.generate_answer
    answer = convert(
        json.loads(completion), model=asked.model, think=asked.think, timings=measured()
    )
    return answer.model_dump_json(exclude_none=True).encode()


def _embed(raw: bytes, resolve: Resolve) -> Forward:
    asked = parse_body(ol.EmbedRequest, raw)
    model_id = resolve(asked.model)
    return Forward(
        _EMBEDDINGS, model_id, tr.embed_body(asked, model_id), answer=partial(_embedded, asked)
    )


def _embedded(asked: ol.EmbedRequest, answer: bytes) -> bytes:
    embedded = tr.embed_answer(json.loads(answer), model=asked.model, timings=measured())
    return embedded.model_dump_json().encode()


def _embeddings(raw: bytes, resolve: Resolve) -> Forward:
    asked = parse_body(ol.EmbeddingsRequest, raw)
    model_id = resolve(asked.model)
    return Forward(_EMBEDDINGS, model_id, tr.embed_body(asked, model_id), answer=_one_embedding)


def _one_embedding(answer: bytes) -> bytes:
    data = json.loads(answer).get("data") or [{}]
    return ol.EmbeddingsAnswer(embedding=data[0].get("embedding") or []).model_dump_json().encode()


async def pull(request: Request) -> Response:
    """Loads the model on the fleet (the models are models.toml's: nothing is fetched
    from a registry). Streamed: a line when the load starts, one per keep-alive period
    while it runs, ``success`` at the end (or ``{"error": ...}``)."""
    state = state_of(request)
    named = await _model_request(request, state)
    model_id = resolve_model(state, named.model_name())
    if not named.stream:
        await state.scheduler.load(model_id)
        return _wire(ol.Progress(status="success"))
    loading = asyncio.ensure_future(state.scheduler.load(model_id))
    return _PullStream(loading, _progress(state, model_id, loading))


async def _progress(
    state: GatewayState, model_id: str, loading: asyncio.Future[Node]
) -> AsyncIterator[bytes]:
    period = state.config.gateway.stream_keepalive_s
    yield ol.Progress(status="pulling manifest").line()
    await asyncio.wait({loading}, timeout=period)
    while not loading.done():
        yield ol.Progress(status=f"loading {model_id}").line()
        await asyncio.wait({loading}, timeout=period)
    try:
        node = loading.result()
    except CortexError as error:
        yield ol.error_line(error)
        return
    yield ol.Progress(status=f"loaded {model_id} on {node.name}").line()
    yield ol.Progress(status="success").line()


class _PullStream(StreamingResponse):
    """Owns the load it reports: a client that leaves does not cancel it (the model is
    wanted), but its outcome is always read."""

    def __init__(self, loading: asyncio.Future[Node], content: AsyncIterator[bytes]) -> None:
        super().__init__(content, media_type=_NDJSON, headers=SSE_HEADERS)
        loading.add_done_callback(_consume)


def _consume(done: asyncio.Future[Node]) -> None:
    if not done.cancelled():
        done.exception()  # read: no "exception never retrieved" warning


async def delete(request: Request) -> Response:
    """Models are managed in models.toml, not deleted through the API: a clear 400."""
    state = state_of(request)
    named = await _model_request(request, state)
    resolve_model(state, named.model_name())  # an unknown model is a 404, as in Ollama
    raise InvalidRequest(
        "models are managed in models.toml on the gateway; remove the model's profile "
        "there (POST /fleet/unload or `cortex unload` frees its memory now)."
    )


async def _model_request(request: Request, state: GatewayState) -> ol.ModelRequest:
    named = parse_body(ol.ModelRequest, await read_request(request, state))
    if not named.model_name():
        raise InvalidRequest("'model' is required.", param="model")
    return named
