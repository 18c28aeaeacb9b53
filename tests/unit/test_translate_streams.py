"""OpenAI chunks -> Anthropic stream events: well formed for any chunking, and the
same message as the unstreamed conversion, judged by the official SDK too."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import hypothesis
import pytest
from anthropic.types import RawMessageStreamEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from anthropic_sdk import final_message, raw_events
from cortex.errors import Overloaded, UpstreamError
from cortex.protocol import anthropic as an
from cortex.translate.ids import to_backend_tool_id
from cortex.translate.responses import to_message
from cortex.translate.streams import StreamTranslator, anthropic_sse, encode_event

SDK_EVENT = TypeAdapter(RawMessageStreamEvent)
CHUNK_ID = "chatcmpl-42"


# --- building OpenAI streams ---------------------------------------------------


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish, **extra}
    return {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "backend",
        "choices": [choice],
    }


def usage_chunk(prompt: int = 7, completion: int = 5) -> dict[str, Any]:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "backend",
        "choices": [],
        "usage": usage,
    }


def tool_header(index: int, id_: str, name: str, arguments: str = "") -> dict[str, Any]:
    function = {"name": name, "arguments": arguments}
    return {"tool_calls": [{"index": index, "id": id_, "type": "function", "function": function}]}


def tool_args(index: int, fragment: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}


def run(
    chunks: list[dict[str, Any]],
    *,
    input_tokens: int = 7,
    stops: list[str] | None = None,
    max_tokens: int | None = None,
) -> list[an.StreamEvent]:
    translator = StreamTranslator(
        model="claude-test",
        input_tokens=input_tokens,
        stop_sequences=stops or [],
        max_tokens=max_tokens,
    )
    events: list[an.StreamEvent] = []
    for piece in chunks:
        events += translator.feed(piece)
    return events + translator.finish()


# --- judging Anthropic streams ---------------------------------------------------


def sse(events: list[an.StreamEvent]) -> bytes:
    return b"".join(encode_event(event) for event in events)


def assert_well_formed(events: list[an.StreamEvent]) -> None:
    """The invariants the SDKs and Claude Code rely on."""
    for event in events:
        frame = encode_event(event).decode()
        assert frame.endswith("\n\n")
        name_line, data_line = frame[:-2].split("\n")
        assert name_line == f"event: {event.type}"
        assert json.loads(data_line.removeprefix("data: "))["type"] == event.type
        if event.type not in ("ping", "error"):
            SDK_EVENT.validate_python(json.loads(data_line.removeprefix("data: ")))
    types = [event.type for event in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    assert (
        types.count("message_start")
        == types.count("message_delta")
        == types.count("message_stop")
        == 1
    )
    start = events[0]
    assert isinstance(start, an.MessageStartEvent)
    assert start.message.usage.input_tokens > 0 and start.message.stop_reason is None
    end = events[-2]
    assert isinstance(end, an.MessageDeltaEvent) and end.delta.stop_reason is not None
    # A length cut may end a tool call's JSON short, as Anthropic's own streams do.
    cut = end.delta.stop_reason in ("max_tokens", "model_context_window_exceeded")

    allowed = {
        "text": {"text_delta"},
        "thinking": {"thinking_delta", "signature_delta"},
        "tool_use": {"input_json_delta"},
    }
    open_block: an.ContentBlockStartEvent | None = None
    next_index, last_delta, fragments = 0, "", ""
    for event in events[1:-2]:
        if isinstance(event, an.ContentBlockStartEvent):
            assert open_block is None, "one block open at a time"
            assert event.index == next_index, "indices 0..n-1 in start order"
            open_block, next_index, last_delta, fragments = event, next_index + 1, "", ""
        elif isinstance(event, an.ContentBlockDeltaEvent):
            assert open_block is not None and event.index == open_block.index
            assert event.delta.type in allowed[open_block.content_block.type]
            assert last_delta != "signature_delta", (
                "the signature is the thinking block's last delta"
            )
            last_delta = event.delta.type
            if isinstance(event.delta, an.InputJsonDelta):
                fragments += event.delta.partial_json
        elif isinstance(event, an.ContentBlockStopEvent):
            assert open_block is not None and event.index == open_block.index
            if open_block.content_block.type == "thinking":
                assert last_delta == "signature_delta"
            if open_block.content_block.type == "tool_use" and not cut:
                assert isinstance(json.loads(fragments), dict)
            open_block = None
        else:
            assert isinstance(event, an.PingEvent), f"unexpected {event.type} mid-message"
    assert open_block is None


def reassemble(events: list[an.StreamEvent]) -> dict[str, Any]:
    """Fold the events into the message they describe (our own accumulator)."""
    message: dict[str, Any] = {}
    fragments: dict[int, str] = {}
    for event in events:
        data = event.model_dump()
        if isinstance(event, an.MessageStartEvent):
            message = data["message"]
        elif isinstance(event, an.ContentBlockStartEvent):
            message["content"].append(data["content_block"])
        elif isinstance(event, an.ContentBlockDeltaEvent):
            block, delta = message["content"][event.index], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                fragments[event.index] = fragments.get(event.index, "") + delta["partial_json"]
        elif isinstance(event, an.ContentBlockStopEvent) and event.index in fragments:
            message["content"][event.index]["input"] = json.loads(fragments[event.index])
        elif isinstance(event, an.MessageDeltaEvent):
            message.update(data["delta"])
            message["usage"].update(data["usage"])
    return message


def assert_same_as_unstreamed(
    events: list[an.StreamEvent], body: dict[str, Any], stops: list[str]
) -> None:
    expected = to_message(body, model="claude-test", stop_sequences=stops).model_dump()
    if not body.get("usage"):  # the stream knew the prompt size from the gateway
        expected["usage"]["input_tokens"] = events[0].message.usage.input_tokens  # type: ignore[union-attr]
    assert reassemble(events) == expected
    sdk = final_message(sse(events))
    assert sdk.model_dump(exclude_none=True) == an.Message.model_validate(expected).model_dump(
        exclude_none=True
    )


# --- examples ---------------------------------------------------------------------


def test_text_stream_frames_and_order() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo!"}),
        chunk({}, "stop"),
        usage_chunk(7, 2),
    ]
    events = run(chunks)
    assert_well_formed(events)
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    frames = sse(events)
    assert frames.startswith(b"event: message_start\ndata: {")
    assert b"[DONE]" not in frames
    delta = events[-2]
    assert isinstance(delta, an.MessageDeltaEvent)
    assert delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens == 2
    message = final_message(frames)
    assert message.content[0].type == "text" and message.content[0].text == "Hello!"
    assert message.usage.input_tokens == 7 and message.usage.output_tokens == 2


def test_message_start_never_reports_zero_input_tokens() -> None:
    events = run([chunk({"content": "x"}, "stop")], input_tokens=0)
    assert isinstance(events[0], an.MessageStartEvent)
    assert events[0].message.usage.input_tokens == 1


def test_text_then_parallel_tools_with_split_arguments() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Checking."}),
        chunk(tool_header(0, "call_a", "weather")),
        chunk(tool_args(0, '{"ci')),
        chunk(tool_args(0, 'ty": "Paris"}')),
        chunk(tool_header(1, "call.b:1", "weather", '{"city"')),
        chunk(tool_args(1, ': "Rome"}')),
        chunk({}, "tool_calls"),
        usage_chunk(),
    ]
    events = run(chunks)
    assert_well_formed(events)
    message = final_message(sse(events))
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[1].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert message.content[2].input == {"city": "Rome"}  # type: ignore[union-attr]
    assert to_backend_tool_id(message.content[2].id) == "call.b:1"  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    # The text block closes before the first tool block starts.
    kinds = [(e.type, getattr(e, "index", None)) for e in events]
    assert kinds.index(("content_block_stop", 0)) < kinds.index(("content_block_start", 1))


def test_arguments_before_the_name_are_held_not_lost() -> None:
    chunks = [
        chunk(tool_args(0, '{"path": ')),
        chunk(tool_header(0, "call_x", "read")),
        chunk(tool_args(0, '"a.txt"}')),
        chunk({}, "tool_calls"),
    ]
    events = run(chunks)
    assert_well_formed(events)
    assert final_message(sse(events)).content[0].input == {"path": "a.txt"}  # type: ignore[union-attr]


def test_a_tool_without_arguments_still_streams_valid_json() -> None:
    events = run([chunk(tool_header(0, "call_n", "now")), chunk({}, "tool_calls")])
    assert_well_formed(events)
    fragments = [e.delta.partial_json for e in events if isinstance(e, an.ContentBlockDeltaEvent)]  # type: ignore[union-attr]
    assert fragments == ["{}"]


def test_a_tool_call_cut_by_max_tokens_streams_its_fragments_as_they_come() -> None:
    translator = StreamTranslator(model="claude-test", input_tokens=7, max_tokens=20)
    events = translator.feed(chunk({"role": "assistant", "content": ""}))
    events += translator.feed(chunk(tool_header(0, "call_w", "get_weather", '{"ci')))
    for fragment in ('ty": ', '"Pa'):
        sent = translator.feed(chunk(tool_args(0, fragment)))
        assert [e.delta.partial_json for e in sent] == [fragment]  # type: ignore[union-attr]
        events += sent
    events += translator.feed(chunk({}, "length"))
    events += translator.feed(usage_chunk(7, 20))
    events += translator.finish()
    assert_well_formed(events)
    end = events[-2]
    assert isinstance(end, an.MessageDeltaEvent) and end.delta.stop_reason == "max_tokens"
    message = final_message(sse(events))
    assert message.stop_reason == "max_tokens"
    (block,) = message.content
    assert block.type == "tool_use" and block.name == "get_weather"
    # Unstreamed, the same cut reads as far as the JSON goes.
    function = {"name": "get_weather", "arguments": '{"city": "Pa'}
    message_body = {"content": None, "tool_calls": [{"id": "call_w", "function": function}]}
    whole = to_message({"choices": [{"message": message_body, "finish_reason": "length"}]})
    assert whole.stop_reason == "max_tokens"
    assert [(b.type, getattr(b, "input", None)) for b in whole.content] == [
        ("tool_use", {"city": "Pa"})
    ]


def test_tool_calls_force_tool_use_even_with_finish_stop() -> None:
    events = run([chunk(tool_header(0, "c", "f", "{}")), chunk({}, "stop")])
    assert isinstance(events[-2], an.MessageDeltaEvent)
    assert events[-2].delta.stop_reason == "tool_use"


def test_think_tags_stream_as_a_signed_thinking_block_before_the_text() -> None:
    chunks = [
        chunk({"role": "assistant", "content": "<th"}),
        chunk({"content": "ink>\nPonder"}),
        chunk({"content": "ing.\n</thi"}),
        chunk({"content": "nk>\n\nAnswer."}, "stop"),
    ]
    events = run(chunks)
    assert_well_formed(events)
    deltas = [e.delta.type for e in events if isinstance(e, an.ContentBlockDeltaEvent)]
    assert deltas == ["thinking_delta", "thinking_delta", "signature_delta", "text_delta"]
    message = final_message(sse(events))
    assert message.content[0].type == "thinking" and message.content[0].thinking == "Pondering."
    assert message.content[0].signature and message.content[1].text == "Answer."  # type: ignore[union-attr]


def test_reasoning_content_deltas_stream_as_thinking() -> None:
    chunks = [
        chunk({"reasoning_content": "Hmm"}),
        chunk({"reasoning_content": "."}),
        chunk({"content": "Hi"}, "stop"),
    ]
    events = run(chunks)
    assert_well_formed(events)
    message = final_message(sse(events))
    assert [b.type for b in message.content] == ["thinking", "text"]


def test_content_and_finish_in_one_chunk() -> None:
    events = run(
        [
            chunk(
                {"content": "Done"},
                "length",
            ),
            usage_chunk(3, 9),
        ]
    )
    assert_well_formed(events)
    end = events[-2]
    assert isinstance(end, an.MessageDeltaEvent)
    assert end.delta.stop_reason == "max_tokens" and end.usage.output_tokens == 9


def test_length_short_of_max_tokens_ends_in_the_context_window() -> None:
    chunks = [chunk({"content": "on and on"}, "length"), usage_chunk(304, 3792)]
    for max_tokens, reason in [(128000, "model_context_window_exceeded"), (3792, "max_tokens")]:
        events = run(chunks, max_tokens=max_tokens)
        assert_well_formed(events)
        end = events[-2]
        assert isinstance(end, an.MessageDeltaEvent) and end.delta.stop_reason == reason
        assert final_message(sse(events)).stop_reason == reason


def test_usage_missing_keeps_the_prompt_count_given() -> None:
    events = run([chunk({"content": "x"}, "stop")], input_tokens=11)
    end = events[-2]
    assert isinstance(end, an.MessageDeltaEvent)
    assert end.usage.input_tokens == 11 and end.usage.output_tokens == 0


def test_stop_sequence_from_the_finish_chunk() -> None:
    events = run(
        [chunk({"content": "1 2 "}), chunk({}, "stop", stop_reason="STOP")], stops=["STOP"]
    )
    end = events[-2]
    assert isinstance(end, an.MessageDeltaEvent)
    assert (end.delta.stop_reason, end.delta.stop_sequence) == ("stop_sequence", "STOP")
    message = final_message(sse(events))
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "STOP"


def test_stop_sequence_left_in_the_text_across_chunks() -> None:
    events = run(
        [chunk({"content": "1 2 ST"}), chunk({"content": "OP"}), chunk({}, "stop")], stops=["STOP"]
    )
    end = events[-2]
    assert isinstance(end, an.MessageDeltaEvent) and end.delta.stop_sequence == "STOP"


def test_failure_mid_stream_is_one_error_event_the_sdk_raises() -> None:
    translator = StreamTranslator(model="m", input_tokens=3)
    events = translator.feed(chunk({"content": "partial"}))
    events += translator.fail(Overloaded("busy"))
    assert translator.feed(chunk({"content": "more"})) == [] and translator.finish() == []
    error = events[-1]
    assert isinstance(error, an.ErrorEvent) and error.error.type == "overloaded_error"
    frame = encode_event(error)
    assert frame.startswith(b"event: error\ndata: ") and b'"type":"error"' in frame
    with pytest.raises(anthropic.APIStatusError):
        raw_events(sse(events))


def test_an_error_payload_from_the_backend_ends_the_stream() -> None:
    translator = StreamTranslator(model="m", input_tokens=3)
    events = translator.feed(chunk({"content": "a"}))
    events += translator.feed(
        {
            "error": {
                "message": "generation failed: boom",
                "type": "api_error",
                "code": "engine_error",
            }
        }
    )
    assert isinstance(events[-1], an.ErrorEvent) and events[-1].error.type == "api_error"
    assert "boom" in events[-1].error.message and translator.done


def test_interleaved_tool_arguments_are_an_upstream_error() -> None:
    translator = StreamTranslator(model="m", input_tokens=3)
    translator.feed(chunk(tool_header(0, "a", "f", "{")))
    translator.feed(chunk(tool_header(1, "b", "g", "{}")))
    with pytest.raises(UpstreamError):
        translator.feed(chunk(tool_args(0, "}")))


def test_ping_frames() -> None:
    assert encode_event(an.PingEvent()) == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_anthropic_sse_turns_a_source_failure_into_an_error_frame() -> None:
    async def source() -> AsyncIterator[dict[str, Any]]:
        yield chunk({"content": "Hi"})
        raise UpstreamError("neuron went away")

    async def collect() -> bytes:
        translator = StreamTranslator(model="m", input_tokens=3)
        return b"".join([frame async for frame in anthropic_sse(source(), translator)])

    body = asyncio.run(collect())
    assert body.startswith(b"event: message_start") and body.endswith(b"\n\n")
    assert b"event: error" in body and b"message_stop" not in body


def test_anthropic_sse_happy_path_matches_the_sdk() -> None:
    async def source() -> AsyncIterator[dict[str, Any]]:
        for piece in [chunk({"content": "Hi"}), chunk({}, "stop"), usage_chunk()]:
            yield piece

    async def collect() -> bytes:
        translator = StreamTranslator(model="claude-test", input_tokens=7)
        return b"".join([frame async for frame in anthropic_sse(source(), translator)])

    assert final_message(asyncio.run(collect())).content[0].text == "Hi"  # type: ignore[union-attr]


# --- property: any valid chunking --------------------------------------------------

TEXT = st.text(
    alphabet=st.sampled_from(list('ab é\n<>/thinkSTOP{}"')), max_size=40
) | st.sampled_from(
    ["", " ", "\n\n", "<", "<th", " <think", "<think>", "</think>", "STOP", "1 2 STOP", "a\n"]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
TOOLS = st.lists(
    st.tuples(
        st.sampled_from(["call_1", "call.x:2", "", "toolu_9", "c-3"]),
        st.sampled_from(["Read", "get_weather", "a" * 80]),
        st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3),
    ),
    max_size=3,
)


def cut(draw: st.DrawFn, text: str) -> list[str]:
    """``text`` in pieces cut at arbitrary points (empty pieces included)."""
    points = sorted(draw(st.lists(st.integers(0, len(text)), max_size=4)))
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """OpenAI chunks, the same completion unstreamed, and the request's stop sequences."""
    thought = draw(st.none() | TEXT)
    tagged = draw(st.booleans())  # <think> in the content, or a reasoning_content field
    text = draw(TEXT)
    tools = draw(st.just([]) | TOOLS)
    stops = draw(st.sampled_from([[], ["STOP"], ["STOP", "\n"]]))
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", None]))
    matched = draw(st.none() | st.sampled_from(["STOP", "</s>"])) if finish == "stop" else None
    usage_at = draw(st.sampled_from(["last", "finish", "missing"]))

    content = (f"<think>{thought}</think>" if tagged and thought is not None else "") + text
    reasoning = thought if not tagged else None
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"reasoning_content": piece} for piece in cut(draw, reasoning or "") if piece]
    deltas += [{"content": piece} for piece in cut(draw, content)]
    calls = []
    for index, (id_, name, arguments) in enumerate(tools):
        fragments = cut(draw, json.dumps(arguments))
        early = draw(st.integers(0, len(fragments)))  # fragments sent before the id and name
        deltas += [tool_args(index, f) for f in fragments[:early]]
        deltas.append(tool_header(index, id_, name))
        deltas += [tool_args(index, f) for f in fragments[early:]]
        calls.append(
            {
                "id": id_,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        )

    usage = {"prompt_tokens": 17, "completion_tokens": 23, "total_tokens": 40}
    chunks = [chunk(delta) for delta in deltas]
    if finish is not None:
        extra = {"stop_reason": matched} if matched else {}
        if draw(st.booleans()):  # finish in its own chunk, or with the last delta
            chunks.append(chunk({}, finish, **extra))
        else:
            chunks[-1]["choices"][0].update({"finish_reason": finish, **extra})
        if usage_at == "finish":
            chunks[-1]["usage"] = usage
    if usage_at == "last":
        chunks.append(usage_chunk(17, 23))

    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": content or None, "tool_calls": calls or None},
        "finish_reason": finish,
    }
    if reasoning:
        choice["message"]["reasoning_content"] = reasoning
    if matched:
        choice["stop_reason"] = matched
    has_usage = usage_at == "last" or (usage_at == "finish" and finish is not None)
    body = {
        "id": CHUNK_ID,
        "model": "backend",
        "choices": [choice],
        "usage": usage if has_usage else None,
    }
    return chunks, body, stops


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.integers(0, 50))
def test_any_valid_stream_is_well_formed_and_matches_the_unstreamed_message(
    stream: tuple[list[dict[str, Any]], dict[str, Any], list[str]], input_tokens: int
) -> None:
    chunks, body, stops = stream
    events = run(chunks, input_tokens=input_tokens or 17, stops=stops)
    end = events[-2]
    assert isinstance(end, an.MessageDeltaEvent)
    starts = [e for e in events if isinstance(e, an.ContentBlockStartEvent)]
    hypothesis.event(f"stop_reason={end.delta.stop_reason}")
    hypothesis.event(f"blocks={[e.content_block.type for e in starts]}")
    assert_well_formed(events)
    assert_same_as_unstreamed(events, body, stops)


def test_message_start_can_go_out_before_the_first_chunk_and_only_once() -> None:
    translator = StreamTranslator(model="m", input_tokens=4, message_id="msg_early")
    early = translator.start()
    events = early + translator.feed(chunk({"content": "Hi"}, "stop")) + translator.finish()
    assert [e.type for e in events].count("message_start") == 1
    assert_well_formed(events)
    assert final_message(sse(events)).id == "msg_early"
