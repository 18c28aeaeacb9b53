"""The Responses API translation: a request to the chat body a neuron serves, a chat
answer to the response object, a chat stream to the typed event sequence (checked by
folding it with the official SDK's own stream state), and, for any chunking of the
engine's output, the same final response as the answer given whole."""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response as SDKResponse
from openai.types.responses import ResponseStreamEvent

from cortex.errors import ContextOverflow, InvalidRequest, UpstreamError
from cortex.gateway.renderers import ResponsesRenderer
from cortex.protocol import openai_responses as rs
from cortex.translate import openai_responses as tr
from cortex.translate.openai_responses_stream import ResponseStream, encode_event

RESPONSE_ID = "resp_0123abcd"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


def request(**fields: Any) -> rs.ResponsesRequest:
    return rs.ResponsesRequest.model_validate({"model": "m", "input": "hi", **fields})


def chat(asked: rs.ResponsesRequest) -> dict[str, Any]:
    return tr.to_chat_request(asked, tr.input_items(asked), model="backend")


def base(asked: rs.ResponsesRequest | None = None) -> rs.Response:
    return tr.echo(asked or request(), response_id=RESPONSE_ID, created_at=1)


# --- request -> chat body ---------------------------------------------------------


def test_a_string_input_is_one_user_message() -> None:
    body = chat(request(input="What is 2+2?", max_output_tokens=7, temperature=0, top_p=0.5))
    assert body == {
        "model": "backend",
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        "max_tokens": 7,
        "temperature": 0,
        "top_p": 0.5,
    }


def test_instructions_and_developer_messages_lead_as_one_system_prompt() -> None:
    asked = request(
        instructions="Be brief.",
        input=[
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "A"}],
            },
            {"role": "user", "content": [{"type": "input_text", "text": "Q1"}]},
            {"role": "system", "content": "B"},
            {
                "role": "assistant",
                "content": [{"type": "output_text", "text": "R1", "annotations": []}],
            },
            {"role": "user", "content": "Q2"},
        ],
    )
    assert chat(asked)["messages"] == [
        {"role": "system", "content": "Be brief.\n\nA\n\nB"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "R1"},
        {"role": "user", "content": "Q2"},
    ]


def test_function_calls_join_the_assistant_turn_and_outputs_are_tool_messages() -> None:
    asked = request(
        input=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "Let me look."},
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": ""},
            {"type": "reasoning", "summary": [], "encrypted_content": "opaque"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "rain"}],
            },
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        ]
    )
    messages = chat(asked)["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "c2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"},
            },
        ],
    }
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    ]


def test_a_call_with_no_text_before_it_is_an_assistant_message_of_its_own() -> None:
    asked = request(
        input=[
            {"role": "user", "content": "go"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        ]
    )
    assert chat(asked)["messages"][1]["content"] is None


def test_images_are_refused_with_a_400() -> None:
    asked = request(
        input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]
    )
    with pytest.raises(InvalidRequest) as caught:
        chat(asked)
    assert caught.value.code == "images_not_supported"


def test_an_empty_input_is_a_400() -> None:
    with pytest.raises(InvalidRequest):
        chat(request(input=[]))


def test_tools_flat_namespaces_flattened_hosted_left_out_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    namespace = {
        "type": "namespace",
        "name": "agents",
        "tools": [{"type": "function", "name": "spawn"}],
    }
    asked = request(
        tools=[WEATHER, {"type": "web_search"}, namespace, {"type": "mcp", "server_label": "x"}],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    with caplog.at_level(logging.INFO, logger="cortex.translate.responses"):
        body = chat(asked)
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["parameters"],
                "description": "Weather in a city",
                "strict": True,
            },
        },
        {
            "type": "function",
            "function": {"name": "spawn", "parameters": {"type": "object", "properties": {}}},
        },
    ]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and "web_search, mcp" in logged[0]
    assert tr.namespaces(asked.tools) == {"spawn": "agents"}


def test_only_hosted_tools_send_no_tools_at_all() -> None:
    body = chat(request(tools=[{"type": "web_search"}], tool_choice={"type": "web_search"}))
    assert "tools" not in body and "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", "auto"),
        ("none", "none"),
        (
            {"type": "function", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
        ({"type": "allowed_tools", "mode": "required", "tools": []}, "required"),
        ({"type": "file_search"}, "auto"),
    ],
)
def test_tool_choice(choice: Any, sent: Any) -> None:
    assert chat(request(tools=[WEATHER], tool_choice=choice))["tool_choice"] == sent


def test_a_tool_choice_naming_no_tool_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat(request(tools=[WEATHER], tool_choice={"type": "function", "name": "nope"}))
    assert caught.value.param == "tool_choice"


def test_text_formats() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    json_schema = {
        "format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    }
    assert chat(request(text=json_schema))["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }
    assert chat(request(text={"format": {"type": "json_object"}}))["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in chat(
        request(text={"format": {"type": "text"}, "verbosity": "low"})
    )


def test_a_stream_asks_for_usage_and_extra_fields_are_tolerated() -> None:
    asked = request(
        stream=True,
        store=False,
        include=["reasoning.encrypted_content"],
        reasoning={"effort": "high", "summary": "auto"},
        prompt_cache_key="k",
        client_metadata={"a": "b"},
        service_tier="auto",
        truncation="auto",
        background=False,
        brand_new_field={"x": 1},
    )
    body = chat(asked)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert set(body) == {"model", "messages", "stream", "stream_options"}


def test_the_echo_carries_the_request_settings() -> None:
    asked = request(
        instructions="I",
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0.5,
        max_output_tokens=9,
        previous_response_id="resp_x",
        store=False,
        metadata={"k": "v"},
        truncation="auto",
    )
    echoed = base(asked)
    assert echoed.truncation == "auto" and base().truncation == "disabled"
    assert echoed.status == "in_progress" and echoed.output == [] and echoed.usage is None
    assert (echoed.instructions, echoed.tool_choice, echoed.parallel_tool_calls) == (
        "I",
        "required",
        False,
    )
    assert echoed.tools[0]["name"] == "get_weather" and echoed.max_output_tokens == 9
    assert echoed.previous_response_id == "resp_x" and echoed.store is False
    assert echoed.metadata == {"k": "v"} and echoed.text == {"format": {"type": "text"}}


# --- chat answer -> response ---------------------------------------------------------


def completion(
    content: str | None = "Paris.",
    *,
    calls: list[dict[str, Any]] | None = None,
    finish: str = "stop",
    cached: int = 0,
    **message: Any,
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "tool_calls": calls,
                    **message,
                },
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 3,
            "total_tokens": 14,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


def test_a_text_answer() -> None:
    response = tr.to_response(completion(cached=4), base())
    assert response.status == "completed" and response.incomplete_details is None
    [message] = response.output
    assert isinstance(message, rs.OutputMessage)
    assert message.id.startswith("msg_") and message.status == "completed"
    assert message.content == [rs.OutputText(text="Paris.")]
    assert response.usage == rs.ResponseUsage(
        input_tokens=11,
        input_tokens_details=rs.InputTokensDetails(cached_tokens=4),
        output_tokens=3,
        output_tokens_details=rs.OutputTokensDetails(reasoning_tokens=0),
        total_tokens=14,
    )
    # the official SDK reads it
    sdk = SDKResponse.model_validate(json.loads(response.model_dump_json()))
    assert sdk.output_text == "Paris."


def test_a_length_cut_is_incomplete() -> None:
    response = tr.to_response(completion("Once upon", finish="length"), base())
    assert response.status == "incomplete"
    assert response.incomplete_details == rs.IncompleteDetails(reason="max_output_tokens")
    assert response.output[-1].status == "incomplete"


def test_tool_calls_are_function_call_items_after_the_text() -> None:
    calls = [
        {"id": "call_9", "type": "function", "function": {"name": "spawn", "arguments": '{"a":1}'}},
        {"type": "function", "function": {"name": "get_weather", "arguments": ""}},
    ]
    response = tr.to_response(
        completion("  \n", calls=calls, finish="tool_calls"), base(), {"spawn": "agents"}
    )
    first, second = response.output
    assert isinstance(first, rs.OutputFunctionCall) and isinstance(second, rs.OutputFunctionCall)
    assert (first.call_id, first.name, first.arguments, first.namespace) == (
        "call_9",
        "spawn",
        '{"a":1}',
        "agents",
    )
    assert first.id.startswith("fc_") and first.id != second.id
    assert second.call_id and second.arguments == "{}" and second.namespace is None


def test_reasoning_is_a_reasoning_item_first() -> None:
    tagged = tr.to_response(completion("<think>\nhmm\n</think>\n\nParis."), base())
    split = tr.to_response(completion("Paris.", reasoning_content="hmm"), base())
    assert tagged == split
    assert [item.type for item in tagged.output] == ["reasoning", "message"]
    assert tagged.output[0].content == [rs.ReasoningText(text="hmm")]


def test_no_choice_is_a_502() -> None:
    with pytest.raises(UpstreamError):
        tr.to_response({"choices": []}, base())


# --- chat stream -> events --------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }


def usage_chunk(prompt: int = 11, completion: int = 3, cached: int = 0) -> dict[str, Any]:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    return {"id": "chatcmpl-1", "choices": [], "usage": usage}


def run(
    chunks: list[dict[str, Any]], response: rs.Response | None = None
) -> tuple[list[rs.StreamEvent], ResponseStream]:
    stream = ResponseStream(response or base(), {"spawn": "agents"})
    events = stream.start(11)
    for piece in chunks:
        events += stream.feed(piece)
    return events + stream.finish(), stream


def sdk_fold(events: list[rs.StreamEvent]) -> tuple[SDKResponse, list[Any]]:
    """The events as the official SDK's ``responses.stream()`` reads them: through the
    SSE bytes, its event types and its stream state."""
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    seen = []
    for frame in b"".join(encode_event(e) for e in events).split(b"\n\n")[:-1]:
        name, data = frame.split(b"\n")
        payload = json.loads(data.removeprefix(b"data: "))
        assert name == b"event: " + payload["type"].encode()
        seen += state.handle_event(construct_type(type_=ResponseStreamEvent, value=payload))
    lifecycle = [e for e in seen if hasattr(e, "response")]
    return lifecycle[-1].response, seen


def test_a_text_stream_in_openai_order() -> None:
    events, stream = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Par"}),
            chunk({"content": "is."}, "stop"),
            usage_chunk(cached=2),
        ]
    )
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created = events[0]
    assert isinstance(created, rs.LifecycleEvent) and created.response.status == "in_progress"
    item_ids = {getattr(e, "item_id", None) for e in events} - {None}
    assert item_ids == {stream.final.output[0].id}
    final, _ = sdk_fold(events)
    assert final.output_text == "Paris." and final.usage.input_tokens_details.cached_tokens == 2
    assert stream.final == tr.to_response(completion("Paris.", cached=2), base())


def test_a_tool_call_stream_holds_arguments_until_the_name() -> None:
    events, _ = run(
        [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}),
            chunk({"tool_calls": [{"index": 0, "id": "call_9", "function": {"name": "spawn"}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}, "tool_calls"),
            usage_chunk(),
        ]
    )
    types = [e.type for e in events]
    assert types[2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[-3]
    assert (
        isinstance(done, rs.ArgumentsDoneEvent)
        and done.arguments == '{"a":1}'
        and done.name == "spawn"
    )
    final, _ = sdk_fold(events)
    call = final.output[0]
    assert call.type == "function_call" and call.namespace == "agents" and call.call_id == "call_9"


def test_a_length_cut_stream_ends_incomplete() -> None:
    events, stream = run([chunk({"content": "Once upon"}, "length"), usage_chunk()])
    assert events[-1].type == "response.incomplete"
    assert stream.final.status == "incomplete" and stream.final.output[0].status == "incomplete"
    done = next(e for e in events if e.type == "response.output_item.done")
    assert done.item.status == "incomplete"


def test_a_failure_mid_stream_is_response_failed_then_error() -> None:
    stream = ResponseStream(base())
    events = stream.start(5) + stream.feed(chunk({"content": "Hal"}))
    events += stream.fail(UpstreamError("node 'n1' failed mid-stream: ClientPayloadError"))
    assert [e.type for e in events[-2:]] == ["response.failed", "error"]
    failed = events[-2]
    assert failed.response.status == "failed" and failed.response.error.code == "server_error"
    assert failed.response.output[0].content[0].text == "Hal"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert stream.feed(chunk({"content": "more"})) == [] and stream.finish() == []
    final, seen = sdk_fold(events)
    assert final.status == "failed" and seen[-1].type == "error"


def test_an_error_payload_from_the_neuron_ends_the_stream() -> None:
    stream = ResponseStream(base())
    events = stream.start(5)
    events += stream.feed(
        {"error": {"message": "engine crashed", "type": "api_error", "code": "engine_crashed"}}
    )
    error = events[-1]
    assert isinstance(error, rs.ErrorEvent) and error.code == "engine_crashed"
    assert error.message == "engine crashed"


def test_a_failure_before_the_stream_began_still_begins_it() -> None:
    stream = ResponseStream(base())
    error = ContextOverflow(prompt_tokens=9000, context_length=4096, model="m", param="input")
    events = stream.fail(error)
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.failed",
        "error",
    ]
    failed, last = events[-2], events[-1]
    assert isinstance(failed, rs.LifecycleEvent) and isinstance(last, rs.ErrorEvent)
    assert failed.response.error.code == last.code == "context_length_exceeded"
    assert "4096" in last.message and last.param == "input"
    final, _ = sdk_fold(events)
    assert final.status == "failed" and final.output == []


def test_an_empty_answer_is_still_a_message() -> None:
    _, stream = run([chunk({"content": ""}, "stop"), usage_chunk()])
    assert stream.final == tr.to_response(completion(None), base())
    assert [item.type for item in stream.final.output] == ["message"]


# --- property: any chunking folds to the unstreamed response ---------------------------

TEXT = st.text(alphabet=st.sampled_from(list('ab é\n<>/think{}"')), max_size=30) | st.sampled_from(
    ["", " ", "\n\n", "<think>", "</think>", "<th", "a\n"]
)
ARGUMENTS = st.dictionaries(
    st.text(max_size=5),
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6),
    max_size=3,
)
TOOLS = st.lists(
    st.tuples(
        st.sampled_from(["call_1", "", "c-3"]), st.sampled_from(["spawn", "get_weather"]), ARGUMENTS
    ),
    max_size=3,
)


def cut(draw: st.DrawFn, text: str) -> list[str]:
    """``text`` in pieces cut at arbitrary points (empty pieces included)."""
    points = sorted(draw(st.lists(st.integers(0, len(text)), max_size=4)))
    return [text[a:b] for a, b in itertools.pairwise([0, *points, len(text)])]


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Chat chunks, and the same completion unstreamed."""
    thought = draw(st.none() | TEXT)
    tagged = draw(st.booleans())  # <think> in the content, or a reasoning_content field
    text = draw(TEXT)
    tools = draw(st.just([]) | TOOLS)
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", None]))
    content = (f"<think>{thought}</think>" if tagged and thought is not None else "") + text
    reasoning = thought if not tagged else None
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"reasoning_content": piece} for piece in cut(draw, reasoning or "") if piece]
    deltas += [{"content": piece} for piece in cut(draw, content)]
    calls = []
    for index, (id_, name, arguments) in enumerate(tools):
        fragments = cut(draw, json.dumps(arguments))
        early = draw(st.integers(0, len(fragments)))  # fragments sent before the id and name
        deltas += [
            {"tool_calls": [{"index": index, "function": {"arguments": f}}]}
            for f in fragments[:early]
        ]
        header = {"index": index, "type": "function", "function": {"name": name}}
        deltas.append({"tool_calls": [{**header, **({"id": id_} if id_ else {})}]})
        deltas += [
            {"tool_calls": [{"index": index, "function": {"arguments": f}}]}
            for f in fragments[early:]
        ]
        calls.append(
            {
                "id": id_,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        )
    chunks = [chunk(delta) for delta in deltas]
    if finish is not None:
        if draw(st.booleans()):  # finish in its own chunk, or with the last delta
            chunks.append(chunk({}, finish))
        else:
            chunks[-1]["choices"][0]["finish_reason"] = finish
    chunks.append(usage_chunk(17, 23, cached=5))
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content or None,
        "tool_calls": calls or None,
    }
    if reasoning:
        message["reasoning_content"] = reasoning
    body = {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    body["usage"] = chunks[-1]["usage"]
    return chunks, body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_any_chunking_folds_to_the_unstreamed_response(
    stream: tuple[list[dict[str, Any]], dict[str, Any]],
) -> None:
    chunks, body = stream
    events, translator = run(chunks)
    whole = tr.to_response(body, base(), {"spawn": "agents"})
    hypothesis.event(f"status={whole.status}")
    hypothesis.event(f"items={[item.type for item in whole.output]}")
    assert translator.final == whole
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final, _ = sdk_fold(events)  # the SDK's own fold agrees
    assert json.loads(final.model_dump_json(exclude_none=True)) == json.loads(
        SDKResponse.model_validate(json.loads(whole.model_dump_json())).model_dump_json(
            exclude_none=True
        )
    )


# --- the renderer: SSE bytes in, SSE bytes out -------------------------------------------


def test_the_renderer_ends_a_cut_stream_with_failed_then_error_and_reports_it() -> None:
    finals: list[rs.Response] = []
    renderer = ResponsesRenderer(ResponseStream(base()), on_final=finals.append)
    renderer.start(9)
    out = renderer.event(b'data: {"choices":[{"index":0,"delta":{"content":"Hal"}}]}\n\n')
    assert renderer.event(b": cortex-report {}\n\n") == b""
    out += renderer.error(UpstreamError("node 'n1' failed mid-stream: ClientPayloadError"))
    names = [line for line in out.decode().splitlines() if line.startswith("event: ")]
    assert names[0] == "event: response.created" and names[-2:] == [
        "event: response.failed",
        "event: error",
    ]
    assert [f.status for f in finals] == ["failed"]
    assert finals[0].created_at == 1 and finals[0].output[0].content[0].text == "Hal"


def test_the_renderer_reports_the_final_response_once_at_done() -> None:
    finals: list[rs.Response] = []
    renderer = ResponsesRenderer(ResponseStream(base()), on_final=finals.append)
    renderer.start(9)
    renderer.event(
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}\n\n'
    )
    assert finals == []
    out = renderer.event(b"data: [DONE]\n\n")
    names = [line for line in out.decode().splitlines() if line.startswith("event: ")]
    assert names[-1] == "event: response.completed"
    assert b"[DONE]" not in out
    assert [f.status for f in finals] == ["completed"] and finals[0].usage.input_tokens == 9
