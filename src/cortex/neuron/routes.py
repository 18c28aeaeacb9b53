"""The neuron's HTTP routes: thin handlers that validate, call one service, map the result."""

from __future__ import annotations

from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cortex.bodies import MIB, read_body
from cortex.disconnect import unless_disconnected
from cortex.errors import InvalidRequest, NotFound
from cortex.neuron.api import chat as chat_api
from cortex.neuron.api import completions as text_completions
from cortex.neuron.api import embeddings as text_embeddings
from cortex.neuron.api import generation
from cortex.neuron.api.finished import finished_requests
from cortex.neuron.api.generation import Prepared
from cortex.neuron.engines.device_set import split_devices
from cortex.neuron.prompt.render import plan_tools, render_prompt
from cortex.neuron.runtime.manager import ModelManager
from cortex.protocol import openai as oa
from cortex.protocol.neuron import (
    EstimateAnswer,
    EstimateDetail,
    FaultAnswer,
    FaultRequest,
    GenerationReport,
    Health,
    LoadAnswer,
    ModelList,
    NodeStatus,
    TokenCount,
    UnloadAnswer,
    UnloadRequest,
)
from cortex.protocol.parsing import parse_body, parse_json, parse_model
from cortex.protocol.prefix_digest import prefix_chain
from cortex.protocol.sse import PROMPT_TOKENS_HEADER, REPORT_HEADER, SSE_HEADERS
from cortex.spec import ModelSpec


def _manager(request: Request) -> ModelManager:
    return request.app.state.manager


async def _body(request: Request) -> bytes:
    return await read_body(request, request.app.state.settings.max_body_mb * MIB)


def _wire(answer: BaseModel, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer serialised by its ``protocol.neuron`` type."""
    return Response(answer.model_dump_json(), media_type="application/json", headers=headers)


async def health(request: Request) -> Response:
    return _wire(Health())


async def status(request: Request) -> Response:
    manager = _manager(request)
    return _wire(
        NodeStatus(
            node=request.app.state.settings.name,
            devices=manager.devices_status(),
            models=manager.statuses(),
        )
    )


async def list_models(request: Request) -> Response:
    return _wire(ModelList(models=_manager(request).statuses()))


async def openai_models(request: Request) -> Response:
    cards = [
        oa.ModelCard(id=m.id, created=int(m.last_used), owned_by=request.app.state.settings.name)
        for m in _manager(request).models()
    ]
    return JSONResponse(oa.ModelList(data=cards).model_dump())


async def load_model(request: Request) -> Response:
    """200 once the model is ready, whether this call loaded it, joined a load under way
    (``outcome``) or found it; 507 with the numbers when it does not fit what is left."""
    spec = parse_body(ModelSpec, await _body(request))
    # contract 1.4: ?devices=cuda:0,cuda:1 where the gateway placed a multi-device model
    # (a query, not a body key: the body is the spec, which refuses unknown keys)
    devices = split_devices(request.query_params.get("devices", ""))
    model, outcome = await _manager(request).load_or_join(spec, devices)
    status = model.status()
    return _wire(LoadAnswer(**status.model_dump(), outcome=outcome))


async def estimate_model(request: Request) -> Response:
    spec = parse_body(ModelSpec, await _body(request))
    estimate = await _manager(request).estimate(spec)
    detail = EstimateDetail.model_validate(estimate.as_dict())
    shares = list(estimate.shares_mb or (estimate.total_mb,))
    return _wire(
        EstimateAnswer(id=spec.id, memory_mb=estimate.total_mb, estimate=detail, shares_mb=shares)
    )


async def unload_model(request: Request) -> Response:
    body = parse_body(UnloadRequest, await _body(request))
    await _manager(request).unload(body.id)
    return _wire(UnloadAnswer(id=body.id))


async def inject_fault(request: Request) -> Response:
    """Testing only (``--enable-fault-injection``): the model's next step hits the fault."""
    body = parse_body(FaultRequest, await _body(request))
    await _manager(request).inject_fault(body.model, body.kind)
    return _wire(FaultAnswer(model=body.model, kind=body.kind))


async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def tokenize(request: Request) -> Response:
    body = parse_json(await _body(request))
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise InvalidRequest("Expected a JSON object with a 'model'", param="model")
    model = _manager(request).ready(body["model"])
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
    return _wire(TokenCount(count=len(await generation.tokenize(model, text))))


def _event_stream(frames: AsyncIterator[bytes], prepared: Prepared) -> Response:
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={**SSE_HEADERS, PROMPT_TOKENS_HEADER: str(len(prepared.prompt_tokens))},
        # also when the body never starts (the client left before the headers went out)
        background=BackgroundTask(prepared.release),
    )


def _answer(completion: BaseModel, prepared: Prepared) -> Response:
    report = GenerationReport.model_validate(prepared.report()).model_dump_json()
    return _wire(completion, headers={REPORT_HEADER: report})


def _wants_usage(body: oa.SamplingFields) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


async def chat_completions(request: Request) -> Response:
    body = parse_json(await _body(request))
    chat = parse_model(oa.ChatCompletionRequest, body)
    model = _manager(request).ready(chat.model)
    chain = prefix_chain(body)  # before admission: nothing may fail between it and the try
    prepared = await chat_api.prepare_chat(model, chat)
    model.remember_prefix(chain)  # admitted: its prompt is about to be in the cache
    if chat.stream:
        return _event_stream(chat_api.stream(model, prepared, _wants_usage(chat)), prepared)
    try:
        completion = await unless_disconnected(request, chat_api.complete(model, prepared))
    finally:
        prepared.release()  # also when cancelled before generation began
    return _answer(completion, prepared)


async def completions(request: Request) -> Response:
    raw = parse_json(await _body(request))
    body = parse_model(oa.CompletionRequest, raw)
    model = _manager(request).ready(body.model)
    chain = prefix_chain(raw)
    prepared = await text_completions.prepare_completion(model, body)
    model.remember_prefix(chain)
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
    body = parse_body(oa.EmbeddingRequest, await _body(request))
    manager = _manager(request)
    model = manager.ready(body.model)
    job = await text_embeddings.prepare_embeddings(model, body)
    manager.count_embedding_context(model)
    answer = await unless_disconnected(
        request, text_embeddings.embed(model, job, body.encoding_format)
    )
    return Response(answer.model_dump_json(), media_type="application/json")


async def finished_request(request: Request) -> Response:
    """A finished generation's counts by the gateway's request id (contract 1.3)."""
    request_id = request.path_params["request_id"]
    finished = finished_requests.get(request_id)
    if finished is None:
        raise NotFound(f"No finished generation with request id '{request_id}' is known here.")
    return Response(finished.model_dump_json(), media_type="application/json")


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
    Route("/requests/{request_id}", finished_request, methods=["GET"]),
]

DEBUG_ROUTES = [Route("/debug/fault", inject_fault, methods=["POST"])]
