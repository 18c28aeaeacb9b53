"""OpenAI chat completions on a loaded model: prompt, generation, response or stream."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from cortex.errors import (
    ContextOverflow,
    CortexError,
    InvalidRequest,
    ModelRecovering,
    Overloaded,
    UpstreamError,
)
from cortex.neuron import grammar
from cortex.neuron.engines.base import (
    EngineFault,
    EngineInfo,
    Event,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextChunk,
)
from cortex.neuron.manager import LoadedModel
from cortex.neuron.prompting import ToolPlan, plan_tools, render_prompt
from cortex.neuron.toolcalls import ParsedToolCall, ToolCallStreamParser, parse_tool_calls
from cortex.protocol import openai as oa
from cortex.protocol.errors import openai_error_body
from cortex.protocol.sse import DONE, data_frame, report_frame
from cortex.request_ids import current_request_id

request_log = logging.getLogger("cortex.neuron.requests")

# Engine finish reasons that end a response normally, as OpenAI names them.
FINISH_REASONS = {"stop": "stop", "length": "length"}
FAULT_PREFIX = "engine fault"  # how a generation ended by a model fault is worded


class _QueueSink:
    """Hands events from the device thread to the request's event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def put(self, event: Event) -> None:
        self._loop.call_soon_threadsafe(self.queue.put_nowait, event)


@dataclass
class Prepared:
    """A validated request: prompt tokens, budget, sampling, and how to read the output."""

    model: str
    prompt_tokens: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stop: list[str]
    tools: ToolPlan | None = None
    _holder: LoadedModel | None = None
    arrived: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished: Finished | None = None

    def report(self) -> dict[str, float | int | None]:
        """What this generation measured, for the gateway (see ``protocol.sse``)."""
        done = self.finished
        ttft = self.first_token_at - self.arrived if self.first_token_at is not None else None
        return {
            "prompt_tokens": done.prompt_tokens if done else len(self.prompt_tokens),
            "completion_tokens": done.completion_tokens if done else 0,
            "cached_tokens": done.cached_tokens if done else 0,
            "ttft_ms": round(ttft * 1000, 2) if ttft is not None else None,
        }

    def release(self) -> None:
        """Give back the place ``admit`` reserved; safe to call more than once."""
        if self._holder is not None:
            self._holder.in_flight -= 1
            self._holder.last_used = time.time()
            self._holder = None


def _check_supported(request: oa.ChatCompletionRequest) -> None:
    if request.n not in (None, 1):
        raise InvalidRequest("n > 1 is not supported; send one request per choice.", param="n")
    if request.logprobs:
        raise InvalidRequest("logprobs are not supported by this server.", param="logprobs")


def _output_grammar(request: oa.ChatCompletionRequest, plan: ToolPlan) -> str | None:
    response_format = request.response_format or {"type": "text"}
    kind = response_format.get("type", "text")
    if plan.forced and kind != "text":
        raise InvalidRequest(
            "A forced tool_choice and a response_format cannot be combined.",
            param="response_format",
        )
    if plan.forced:
        return grammar.tool_call_grammar(plan.forced, plan.fmt)
    if kind == "text":
        return None
    if kind == "json_object":
        return grammar.json_object_grammar()
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return grammar.json_schema_grammar(schema if schema is not None else {})
    raise InvalidRequest(f"Unknown response_format type '{kind}'.", param="response_format")


def sampling_of(request: oa.SamplingFields, output_grammar: str | None = None) -> SamplingParams:
    return SamplingParams(
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=request.top_k or 0,
        min_p=request.min_p or 0.0,
        seed=request.seed,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        repetition_penalty=request.repetition_penalty or 1.0,
        grammar=output_grammar,
    )


def admit(model: LoadedModel, prepared: Prepared) -> Prepared:
    """Reserve a place (running or waiting) for ``prepared``, or refuse at once: 429.

    Counted here, before the response starts, so concurrent arrivals cannot all slip
    past a queue that has room for one; released when generation ends.
    """
    engine = model.engine
    assert engine is not None
    if model.in_flight >= engine.info.max_batch + model.spec.max_queue:
        raise Overloaded(
            f"The model '{model.id}' is at capacity ({engine.info.max_batch} running, "
            f"{model.spec.max_queue} waiting); retry shortly.",
            code="queue_full",
            retry_after_s=1,
        )
    model.in_flight += 1
    prepared._holder = model
    return prepared


def check_token_ids(tokens: list[int], info: EngineInfo, param: str) -> None:
    """A token id outside the vocabulary is the client's error, never a failed decode."""
    bad = next((t for t in tokens if not 0 <= t < info.n_vocab), None)
    if bad is not None:
        raise InvalidRequest(
            f"Token id {bad} is outside the model's vocabulary (0 to {info.n_vocab - 1}).",
            param=param,
        )


def budget(model: LoadedModel, tokens: list[int], wanted: int | None) -> int:
    """Tokens left to generate; a prompt that leaves no room is a 400 naming the numbers."""
    assert model.engine is not None
    context = model.engine.info.context_length
    if len(tokens) >= context:
        raise ContextOverflow(prompt_tokens=len(tokens), context_length=context, model=model.id)
    room = context - len(tokens)
    # A limit larger than the room left is clamped, not refused (clients ask for 32k).
    return room if wanted is None else min(wanted, room)


async def prepare_chat(model: LoadedModel, request: oa.ChatCompletionRequest) -> Prepared:
    """Everything that can fail because of the request, before any response starts."""
    _check_supported(request)
    engine = model.engine
    assert engine is not None
    plan = plan_tools(request, engine.info.chat_template)
    output_grammar = _output_grammar(request, plan)
    # Rendering and tokenizing a long conversation takes milliseconds: off the event loop.
    text = await asyncio.to_thread(render_prompt, engine.info, request, plan)
    tokens = await asyncio.to_thread(engine.tokenize_prompt, text)
    prepared = Prepared(
        model=model.id,
        prompt_tokens=tokens,
        max_new_tokens=budget(model, tokens, request.token_limit()),
        sampling=sampling_of(request, output_grammar),
        stop=request.stop_list(),
        tools=plan if plan.active else None,
    )
    return admit(model, prepared)


async def generate(model: LoadedModel, prepared: Prepared) -> AsyncIterator[TextChunk | Finished]:
    """Run one sequence; closing the iterator early cancels it on the device."""
    engine = model.engine
    assert engine is not None
    sink = _QueueSink()
    job = GenerationRequest(
        prompt_tokens=prepared.prompt_tokens,
        max_new_tokens=prepared.max_new_tokens,
        sampling=prepared.sampling,
        stop=prepared.stop,
        sink=sink,
    )

    def on_fault(reason: str) -> None:
        sink.put(Finished("error", len(job.prompt_tokens), 0, error=reason))

    model.fault_listeners.add(on_fault)
    try:
        try:
            await model.worker.run(lambda: engine.submit(job))
        except EngineFault:  # the device thread was lost before the request reached it
            raise ModelRecovering(model.id) from None
        while True:
            event = await sink.queue.get()
            if isinstance(event, Finished):
                prepared.finished = event
            elif prepared.first_token_at is None:
                prepared.first_token_at = time.perf_counter()
            yield event
            if isinstance(event, Finished):
                return
    finally:
        _record(model, prepared)
        model.fault_listeners.discard(on_fault)
        job.cancelled = True  # no-op once finished; frees the slot at the next step otherwise
        prepared.release()


def _record(model: LoadedModel, prepared: Prepared) -> None:
    """Metrics and one log line for a generation that has ended (the id is the gateway's)."""
    done = prepared.finished
    finish = done.reason if done else "cancelled"
    metrics = model.metrics
    if metrics is not None:
        metrics.requests.labels(model.id, finish).inc()
        if prepared.first_token_at is not None:
            metrics.ttft.labels(model.id).observe(prepared.first_token_at - prepared.arrived)
        if done is not None:
            metrics.generated_tokens.labels(model.id).inc(done.completion_tokens)
            metrics.prefix_cache_hits.labels(model.id).inc(done.cached_tokens)
    report = prepared.report()
    fields = {
        "request_id": current_request_id.get(),
        "model": model.id,
        "finish": finish,
        **report,
        "latency_ms": round((time.perf_counter() - prepared.arrived) * 1000, 1),
    }
    request_log.info(
        "request %s model=%s finish=%s tokens=%d+%d cached=%d ttft_ms=%s latency_ms=%.1f",
        fields["request_id"],
        model.id,
        finish,
        report["prompt_tokens"],
        report["completion_tokens"],
        report["cached_tokens"],
        report["ttft_ms"],
        fields["latency_ms"],
        extra={"fields": fields},
    )


def finish_error(event: Finished, model_id: str) -> CortexError:
    if event.error == "invalid grammar":
        return InvalidRequest("The output grammar could not be compiled.")
    if event.error and event.error.startswith(FAULT_PREFIX):
        # The model reloads itself: a retry shortly (or on another node) will work.
        return ModelRecovering(model_id)
    return UpstreamError(f"generation failed: {event.error}", code="engine_error")


def _tool_calls(calls: list[ParsedToolCall]) -> list[oa.ToolCall]:
    return [
        oa.ToolCall(id=c.id, function=oa.FunctionCall(name=c.name, arguments=c.arguments))
        for c in calls
    ]


async def collect(model: LoadedModel, prepared: Prepared) -> tuple[str, Finished]:
    """The whole generated text and how it ended; a failed generation raises."""
    parts: list[str] = []
    async for event in generate(model, prepared):
        if isinstance(event, TextChunk):
            parts.append(event.text)
        elif event.reason not in FINISH_REASONS:
            raise finish_error(event, model.id)
        else:
            return "".join(parts), event
    raise UpstreamError("generation ended without a result")


async def complete(model: LoadedModel, prepared: Prepared) -> oa.ChatCompletion:
    text, event = await collect(model, prepared)
    content: str | None = text
    calls: list[ParsedToolCall] = []
    if prepared.tools is not None:
        content, calls = parse_tool_calls(content, prepared.tools.fmt)
        if not prepared.tools.parallel:
            calls = calls[:1]
    finish = "tool_calls" if calls else FINISH_REASONS[event.reason]
    return oa.ChatCompletion(
        id=oa.completion_id(),
        created=oa.now(),
        model=model.id,
        choices=[
            oa.Choice(
                message=oa.AssistantMessage(
                    content=content or (None if calls else ""),
                    tool_calls=_tool_calls(calls) or None,
                ),
                finish_reason=finish,  # type: ignore[arg-type]
                stop_reason=event.stop_sequence,
            )
        ],
        usage=oa.Usage.of(event.prompt_tokens, event.completion_tokens, event.cached_tokens),
    )


async def stream(
    model: LoadedModel, prepared: Prepared, include_usage: bool
) -> AsyncIterator[bytes]:
    """SSE frames: one role delta, content and tool-call deltas, the finish, usage, [DONE]."""
    chunk_id, created = oa.completion_id(), oa.now()
    parser = ToolCallStreamParser(prepared.tools.fmt) if prepared.tools else None

    def chunk(delta: oa.Delta, finish: str | None = None, stop: str | None = None) -> bytes:
        choice = oa.ChunkChoice(delta=delta, finish_reason=finish, stop_reason=stop)  # type: ignore[arg-type]
        return data_frame(
            oa.ChatCompletionChunk(id=chunk_id, created=created, model=model.id, choices=[choice])
        )

    def deltas(text: str, calls: list) -> list[bytes]:
        out = [chunk(oa.Delta(content=text))] if text else []
        for call in calls:
            function = {"name": call.name, "arguments": call.arguments}
            if call.name is None:
                function = {"arguments": call.arguments}
            tool_delta = oa.ToolCallDelta(
                index=call.index,
                id=call.id,
                type="function" if call.id else None,
                function=function,
            )
            out.append(chunk(oa.Delta(tool_calls=[tool_delta])))
        return out

    yield chunk(oa.Delta(role="assistant", content=""))
    async for event in generate(model, prepared):
        if isinstance(event, TextChunk):
            text, calls = parser.feed(event.text) if parser else (event.text, [])
            for frame in deltas(text, calls):
                yield frame
            continue
        if event.reason not in FINISH_REASONS:
            yield data_frame(json.dumps(openai_error_body(finish_error(event, model.id))).encode())
            return
        if parser is not None:
            for frame in deltas(*parser.finish()):
                yield frame
        finish = (
            "tool_calls" if parser is not None and parser.calls else FINISH_REASONS[event.reason]
        )
        yield chunk(oa.Delta(), finish, event.stop_sequence)
        if include_usage:
            usage = oa.Usage.of(event.prompt_tokens, event.completion_tokens, event.cached_tokens)
            yield data_frame(
                oa.ChatCompletionChunk(
                    id=chunk_id, created=created, model=model.id, choices=[], usage=usage
                )
            )
    yield report_frame(prepared.report())
    yield DONE
