"""OpenAI chat completions on a loaded model: prompt, generation, response or stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cortex.errors import ContextOverflow, CortexError, InvalidRequest, UpstreamError
from cortex.neuron.chat import render_chat
from cortex.neuron.engines.base import (
    Event,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextChunk,
)
from cortex.neuron.manager import LoadedModel
from cortex.protocol import openai as oa
from cortex.protocol.errors import openai_error_body
from cortex.protocol.sse import DONE, data_frame

_FINISH = {"stop": "stop", "length": "length"}


class _QueueSink:
    """Hands events from the device thread to the request's event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def put(self, event: Event) -> None:
        self._loop.call_soon_threadsafe(self.queue.put_nowait, event)


@dataclass
class PreparedChat:
    """A validated request, its prompt tokens and its generation budget."""

    request: oa.ChatCompletionRequest
    prompt_tokens: list[int]
    max_new_tokens: int


def template_messages(request: oa.ChatCompletionRequest) -> list[dict[str, Any]]:
    """OpenAI messages in the shape HF chat templates expect."""
    out = []
    for message in request.messages:
        if isinstance(message.content, list):
            kinds = {part.get("type") for part in message.content} - {"text"}
            if kinds:
                raise InvalidRequest(
                    f"This model reads text only; content parts of type {sorted(kinds)} "
                    "are not supported.",
                    param="messages",
                )
        entry: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": message.text(),
        }
        if message.tool_calls:
            entry["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": _args(call)},
                }
                for call in message.tool_calls
            ]
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        if message.name:
            entry["name"] = message.name
        out.append(entry)
    return out


def _args(call: oa.ToolCall) -> Any:
    try:
        return json.loads(call.function.arguments or "{}")
    except ValueError:
        return call.function.arguments


def render_prompt(model: LoadedModel, request: oa.ChatCompletionRequest) -> str:
    assert model.engine is not None
    info = model.engine.info
    tools = [tool.model_dump(exclude_none=True) for tool in request.tools or []] or None
    return render_chat(
        info.chat_template,
        template_messages(request),
        bos_token=info.bos_token,
        eos_token=info.eos_token,
        tools=tools,
    )


def _unsupported(request: oa.ChatCompletionRequest) -> None:
    if request.n not in (None, 1):
        raise InvalidRequest("n > 1 is not supported; send one request per choice.", param="n")
    if request.logprobs:
        raise InvalidRequest("logprobs are not supported by this server.", param="logprobs")
    kind = (request.response_format or {}).get("type", "text")
    if kind != "text":
        raise InvalidRequest(
            f"response_format '{kind}' is not supported by this server yet.",
            param="response_format",
        )


async def prepare_chat(model: LoadedModel, request: oa.ChatCompletionRequest) -> PreparedChat:
    """Everything that can fail because of the request, before any response starts."""
    _unsupported(request)
    engine = model.engine
    assert engine is not None
    # Rendering and tokenizing a long conversation takes milliseconds: off the event loop.
    text = await asyncio.to_thread(render_prompt, model, request)
    tokens = await asyncio.to_thread(engine.tokenize_prompt, text)
    context = engine.info.context_length
    if len(tokens) >= context:
        raise ContextOverflow(prompt_tokens=len(tokens), context_length=context, model=model.id)
    room = context - len(tokens)
    # A limit larger than the room left is clamped, not refused (clients ask for 32k).
    wanted = request.token_limit()
    return PreparedChat(request, tokens, room if wanted is None else min(wanted, room))


def sampling_of(request: oa.SamplingFields) -> SamplingParams:
    return SamplingParams(
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=request.top_k or 0,
        min_p=request.min_p or 0.0,
        seed=request.seed,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        repetition_penalty=request.repetition_penalty or 1.0,
    )


async def generate(
    model: LoadedModel, prepared: PreparedChat
) -> AsyncIterator[TextChunk | Finished]:
    """Run one sequence; closing the iterator early cancels it on the device."""
    engine = model.engine
    assert engine is not None
    sink = _QueueSink()
    job = GenerationRequest(
        prompt_tokens=prepared.prompt_tokens,
        max_new_tokens=prepared.max_new_tokens,
        sampling=sampling_of(prepared.request),
        stop=prepared.request.stop_list(),
        sink=sink,
    )
    model.in_flight += 1
    try:
        await model.worker.run(lambda: engine.submit(job))
        while True:
            event = await sink.queue.get()
            yield event
            if isinstance(event, Finished):
                return
    finally:
        job.cancelled = True  # no-op once finished; frees the slot at the next step otherwise
        model.in_flight -= 1
        model.last_used = time.time()


def _finish_error(event: Finished) -> CortexError:
    return UpstreamError(f"generation failed: {event.error}", code="engine_error")


async def complete(model: LoadedModel, prepared: PreparedChat) -> oa.ChatCompletion:
    parts: list[str] = []
    async for event in generate(model, prepared):
        if isinstance(event, TextChunk):
            parts.append(event.text)
            continue
        if event.reason not in _FINISH:
            raise _finish_error(event)
        return oa.ChatCompletion(
            id=oa.completion_id(),
            created=oa.now(),
            model=model.id,
            choices=[
                oa.Choice(
                    message=oa.AssistantMessage(content="".join(parts)),
                    finish_reason=_FINISH[event.reason],  # type: ignore[arg-type]
                )
            ],
            usage=oa.Usage.of(event.prompt_tokens, event.completion_tokens, event.cached_tokens),
        )
    raise UpstreamError("generation ended without a result")


async def stream(model: LoadedModel, prepared: PreparedChat) -> AsyncIterator[bytes]:
    """SSE frames: one role delta, content deltas, the finish, usage if asked, [DONE]."""
    request = prepared.request
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    chunk_id, created = oa.completion_id(), oa.now()

    def chunk(delta: oa.Delta, finish: str | None = None) -> bytes:
        return data_frame(
            oa.ChatCompletionChunk(
                id=chunk_id,
                created=created,
                model=model.id,
                choices=[oa.ChunkChoice(delta=delta, finish_reason=finish)],  # type: ignore[arg-type]
            )
        )

    yield chunk(oa.Delta(role="assistant", content=""))
    async for event in generate(model, prepared):
        if isinstance(event, TextChunk):
            yield chunk(oa.Delta(content=event.text))
            continue
        if event.reason not in _FINISH:
            yield data_frame(json.dumps(openai_error_body(_finish_error(event))).encode())
            return
        yield chunk(oa.Delta(), _FINISH[event.reason])
        if include_usage:
            usage = oa.Usage.of(event.prompt_tokens, event.completion_tokens, event.cached_tokens)
            yield data_frame(
                oa.ChatCompletionChunk(
                    id=chunk_id, created=created, model=model.id, choices=[], usage=usage
                )
            )
    yield DONE
