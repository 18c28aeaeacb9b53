"""The neuron's HTTP routes: thin handlers that validate, call one service, map the result."""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cortex.disconnect import unless_disconnected
from cortex.errors import AuthenticationFailed, InvalidRequest
from cortex.neuron import completions as text_completions
from cortex.neuron import embeddings as text_embeddings
from cortex.neuron import serving
from cortex.neuron.manager import ModelManager
from cortex.neuron.prompting import plan_tools, render_prompt
from cortex.neuron.settings import NeuronSettings
from cortex.protocol import openai as oa
from cortex.protocol.parsing import parse_body, parse_json, parse_model
from cortex.protocol.sse import PROMPT_TOKENS_HEADER, REPORT_HEADER
from cortex.spec import ModelSpec

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _manager(request: Request) -> ModelManager:
    return request.app.state.manager


def _require_admin(request: Request) -> None:
    settings: NeuronSettings = request.app.state.settings
    if settings.token is None:
        return
    supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(supplied.encode(), settings.token.encode()):
        raise AuthenticationFailed("This route needs the neuron's admin token as a Bearer token.")


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def status(request: Request) -> Response:
    manager = _manager(request)
    return JSONResponse(
        {
            "node": request.app.state.settings.name,
            "devices": manager.devices_status(),
            "models": [model.status() for model in manager.models()],
        }
    )


async def list_models(request: Request) -> Response:
    return JSONResponse({"models": [model.status() for model in _manager(request).models()]})


async def openai_models(request: Request) -> Response:
    cards = [
        oa.ModelCard(id=m.id, created=int(m.last_used), owned_by=request.app.state.settings.name)
        for m in _manager(request).models()
    ]
    return JSONResponse(oa.ModelList(data=cards).model_dump())


async def load_model(request: Request) -> Response:
    _require_admin(request)
    spec = parse_body(ModelSpec, await request.body())
    model = await _manager(request).load(spec)
    return JSONResponse(model.status())


async def estimate_model(request: Request) -> Response:
    _require_admin(request)
    spec = parse_body(ModelSpec, await request.body())
    estimate = await _manager(request).estimate(spec)
    return JSONResponse(
        {"id": spec.id, "memory_mb": estimate.total_mb, "estimate": estimate.as_dict()}
    )


async def unload_model(request: Request) -> Response:
    _require_admin(request)
    body = parse_json(await request.body())
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise InvalidRequest('Expected {"id": "<model id>"}', param="id")
    await _manager(request).unload(body["id"])
    return JSONResponse({"id": body["id"], "unloaded": True})


async def inject_fault(request: Request) -> Response:
    """Testing only (``--enable-fault-injection``): the model's next step hits the fault."""
    _require_admin(request)
    body = parse_json(await request.body())
    fields = ("model", "kind")
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in fields):
        raise InvalidRequest('Expected {"model": "<model id>", "kind": "<fault kind>"}')
    await _manager(request).inject_fault(body["model"], body["kind"])
    return JSONResponse({"model": body["model"], "kind": body["kind"], "armed": True})


async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def tokenize(request: Request) -> Response:
    body = parse_json(await request.body())
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise InvalidRequest("Expected a JSON object with a 'model'", param="model")
    model = _manager(request).ready(body["model"])
    assert model.engine is not None
    if "messages" in body:
        chat = parse_model(oa.ChatCompletionRequest, body)
        plan = plan_tools(chat, model.engine.info.chat_template)
        text = render_prompt(model.engine.info, chat, plan)
    elif isinstance(body.get("prompt"), str):
        text = body["prompt"]
    else:
        raise InvalidRequest(
            "Send 'messages' (chat) or 'prompt' (text) to count.", param="messages"
        )
    return JSONResponse({"count": len(model.engine.tokenize_prompt(text))})


def _event_stream(frames: AsyncIterator[bytes], prepared: serving.Prepared) -> Response:
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={**SSE_HEADERS, PROMPT_TOKENS_HEADER: str(len(prepared.prompt_tokens))},
        # also when the body never starts (the client left before the headers went out)
        background=BackgroundTask(prepared.release),
    )


def _answer(completion: BaseModel, prepared: serving.Prepared) -> Response:
    report = json.dumps(prepared.report(), separators=(",", ":"))
    return Response(
        completion.model_dump_json(),
        media_type="application/json",
        headers={REPORT_HEADER: report},
    )


def _wants_usage(body: oa.SamplingFields) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


async def chat_completions(request: Request) -> Response:
    chat = parse_body(oa.ChatCompletionRequest, await request.body())
    model = _manager(request).ready(chat.model)
    prepared = await serving.prepare_chat(model, chat)
    if chat.stream:
        return _event_stream(serving.stream(model, prepared, _wants_usage(chat)), prepared)
    try:
        completion = await unless_disconnected(request, serving.complete(model, prepared))
    finally:
        prepared.release()  # also when cancelled before generation began
    return _answer(completion, prepared)


async def completions(request: Request) -> Response:
    body = parse_body(oa.CompletionRequest, await request.body())
    model = _manager(request).ready(body.model)
    prepared = await text_completions.prepare_completion(model, body)
    if body.stream:
        frames = text_completions.stream_text(model, prepared, _wants_usage(body))
        return _event_stream(frames, prepared)
    try:
        answer = text_completions.complete_text(model, prepared)
        completion = await unless_disconnected(request, answer)
    finally:
        prepared.release()  # also when cancelled before generation began
    return _answer(completion, prepared)


async def embeddings(request: Request) -> Response:
    body = parse_body(oa.EmbeddingRequest, await request.body())
    manager = _manager(request)
    model = manager.ready(body.model)
    job = await text_embeddings.prepare_embeddings(model, body)
    manager.count_embedding_context(model)
    answer = await unless_disconnected(
        request, text_embeddings.embed(model, job, body.encoding_format)
    )
    return Response(answer.model_dump_json(), media_type="application/json")


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/status", status, methods=["GET"]),
    Route("/models", list_models, methods=["GET"]),
    Route("/models/load", load_model, methods=["POST"]),
    Route("/models/unload", unload_model, methods=["POST"]),
    Route("/models/estimate", estimate_model, methods=["POST"]),
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/v1/models", openai_models, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/metrics", metrics, methods=["GET"]),
]

DEBUG_ROUTES = [Route("/debug/fault", inject_fault, methods=["POST"])]
