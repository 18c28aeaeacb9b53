"""OpenAI ``/v1/chat/completions`` on a loaded model: prompt, tools, response or stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from cortex.errors import InvalidRequest
from cortex.neuron.api.generation import (
    FINISH_REASONS,
    Prepared,
    admit,
    budget,
    collect,
    finish_error,
    generate,
    sampling_of,
    tokenize,
)
from cortex.neuron.engines.base import TextChunk
from cortex.neuron.prompt import grammar
from cortex.neuron.prompt.render import ToolPlan, plan_tools, render_prompt
from cortex.neuron.prompt.toolcalls import (
    ParsedToolCall,
    ToolCallDelta,
    ToolCallStreamParser,
    parse_tool_calls,
)
from cortex.neuron.runtime.manager import ServingModel
from cortex.protocol import openai as oa
from cortex.protocol.errors import openai_error_body
from cortex.protocol.sse import DONE, data_frame, report_frame


def _check_supported(request: oa.ChatCompletionRequest) -> None:
    if request.n not in (None, 1):
        raise InvalidRequest("n > 1 is not supported; send one request per choice.", param="n")
    if request.logprobs:
        raise InvalidRequest("logprobs are not supported by this server.", param="logprobs")
    if request.logit_bias:
        raise InvalidRequest("logit_bias is not supported by this server.", param="logit_bias")


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


async def prepare_chat(model: ServingModel, request: oa.ChatCompletionRequest) -> Prepared:
    """Everything that can fail because of the request, before any response starts."""
    _check_supported(request)
    engine = model.engine
    plan = plan_tools(request, engine.info.chat_template)
    output_grammar = _output_grammar(request, plan)
    # Rendering and tokenizing a long conversation takes milliseconds: off the event loop.
    text = await asyncio.to_thread(render_prompt, engine.info, request, plan)
    tokens = await tokenize(model, text)
    prepared = Prepared(
        model=model.id,
        prompt_tokens=tokens,
        max_new_tokens=budget(model, tokens, request.token_limit()),
        sampling=sampling_of(model, request, output_grammar),
        stop=request.stop_list(),
        tools=plan if plan.active else None,
    )
    return admit(model, prepared)


def _tool_calls(calls: list[ParsedToolCall]) -> list[oa.ToolCall]:
    return [
        oa.ToolCall(id=c.id, function=oa.FunctionCall(name=c.name, arguments=c.arguments))
        for c in calls
    ]


def _finish_reason(reason: str, calls: bool) -> str:
    """As OpenAI says it: a cut is "length" even inside a call (whose arguments are then
    the JSON generated so far); calls made otherwise are "tool_calls"."""
    if calls and reason != "length":
        return "tool_calls"
    return FINISH_REASONS[reason]


def _parser(prepared: Prepared) -> ToolCallStreamParser | None:
    plan = prepared.tools
    return ToolCallStreamParser(plan.fmt, forced=bool(plan.forced)) if plan else None


async def complete(model: ServingModel, prepared: Prepared) -> oa.ChatCompletion:
    text, event = await collect(model, prepared)
    content: str | None = text
    calls: list[ParsedToolCall] = []
    if prepared.tools is not None:
        content, calls = parse_tool_calls(content, prepared.tools.fmt, bool(prepared.tools.forced))
        if not prepared.tools.parallel:
            calls = calls[:1]
    finish = _finish_reason(event.reason, bool(calls))
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
    model: ServingModel, prepared: Prepared, include_usage: bool
) -> AsyncIterator[bytes]:
    """SSE frames: one role delta, content and tool-call deltas, the finish, usage, [DONE]."""
    chunk_id, created = oa.completion_id(), oa.now()
    parser = _parser(prepared)
    # Without parallel calls only the first is kept, as in the whole response.
    max_calls = 1 if prepared.tools is not None and not prepared.tools.parallel else None

    def chunk(delta: oa.Delta, finish: str | None = None, stop: str | None = None) -> bytes:
        choice = oa.ChunkChoice(delta=delta, finish_reason=finish, stop_reason=stop)  # type: ignore[arg-type]
        return data_frame(
            oa.ChatCompletionChunk(id=chunk_id, created=created, model=model.id, choices=[choice])
        )

    def deltas(text: str, calls: list[ToolCallDelta]) -> list[bytes]:
        out = [chunk(oa.Delta(content=text))] if text else []
        for call in calls:
            if max_calls is not None and call.index >= max_calls:
                continue
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
        finish = _finish_reason(event.reason, parser is not None and bool(parser.calls))
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
