"""Upstream SSE events -> the client's stream: the event splitter, and each dialect's
renderer fed one event at a time, as the proxy's loop feeds them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from anthropic_sdk import final_message
from cortex.errors import UpstreamError
from cortex.gateway.renderers import AnthropicRenderer, OllamaRenderer, OpenAIRenderer
from cortex.protocol.sse import DONE, data_frame, data_of, events, report_frame

CHUNKS = [
    {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hello"}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {"content": " there"}}]},
    {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"id": "c", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}},
]
STREAM = [
    *(data_frame(json.dumps(chunk).encode()) for chunk in CHUNKS),
    report_frame({"prompt_tokens": 7, "completion_tokens": 2}),
    DONE,
]


def split(chunks: list[bytes]) -> list[bytes]:
    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def collect() -> list[bytes]:
        return [event async for event in events(source())]

    return asyncio.run(collect())


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_events_whatever_the_chunking(size: int) -> None:
    body = b"".join(STREAM)
    assert split([body[i : i + size] for i in range(0, len(body), size)]) == STREAM


def test_bytes_after_the_last_blank_line_are_no_event() -> None:
    assert split([b"data: 1\n\ndata: 2\n", b"\ndata: cut"]) == [b"data: 1\n\n", b"data: 2\n\n"]


def test_data_of() -> None:
    assert data_of(b"data: {}\n\n") == b"{}"
    assert data_of(b"event: x\ndata: a\ndata:b\n\n") == b"a\nb"
    assert data_of(b": cortex-report {}\n\n") is None


def test_openai_passes_every_event_through() -> None:
    renderer = OpenAIRenderer()
    renderer.start(7)
    assert [renderer.event(event) for event in STREAM] == STREAM


def test_anthropic_renders_event_by_event() -> None:
    renderer = AnthropicRenderer("claude-test", [])
    renderer.start(7)
    body = b"".join(renderer.event(event) for event in STREAM)
    message = final_message(body)
    assert message.content[0].text == "Hello there"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 2
    assert message.usage.input_tokens == 7


def test_anthropic_ends_with_one_error_event() -> None:
    renderer = AnthropicRenderer("claude-test", [])
    renderer.start(7)
    body = b"".join(renderer.event(event) for event in STREAM[:2])
    body += renderer.error(UpstreamError("node went away"))
    assert body.startswith(b"event: message_start") and body.endswith(b"\n\n")
    assert body.count(b"event: error") == 1 and b"message_stop" not in body
    assert renderer.error(UpstreamError("again")) == b""  # nothing after the error


def test_anthropic_refuses_an_event_that_is_not_json() -> None:
    renderer = AnthropicRenderer("claude-test", [])
    renderer.start(7)
    with pytest.raises(UpstreamError):
        renderer.event(b"data: {not json\n\n")


def test_an_error_before_the_upstream_answered() -> None:
    body = AnthropicRenderer("claude-test", []).error(UpstreamError("no node"))
    assert body.startswith(b"event: error\ndata: ") and b"no node" in body
    assert OpenAIRenderer().error(UpstreamError("no node")).startswith(b'data: {"error"')


def test_ollama_renders_ndjson_lines_the_client_joins() -> None:
    renderer = OllamaRenderer("small", "chat", think=None)
    assert renderer.media_type == "application/x-ndjson"
    renderer.start(7)
    body = b"".join(renderer.event(event) for event in STREAM)
    lines = [json.loads(line) for line in body.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == "Hello there"
    assert [line["done"] for line in lines] == [False, False, True]
    assert lines[-1]["prompt_eval_count"] == 7 and lines[-1]["eval_count"] == 2


def test_ollama_waits_with_an_empty_chunk_and_ends_with_an_error_line() -> None:
    renderer = OllamaRenderer("small", "generate", think=None)
    waiting = json.loads(renderer.waiting("m"))
    assert waiting["response"] == "" and waiting["done"] is False
    assert json.loads(renderer.error(UpstreamError("no node"))) == {"error": "no node"}
    renderer.start(1)
    failed = renderer.event(data_frame(b'{"error": {"message": "boom", "type": "api_error"}}'))
    assert json.loads(failed) == {"error": "boom"}


def test_server_sent_event_renderers_wait_with_a_comment() -> None:
    for renderer in (OpenAIRenderer(), AnthropicRenderer("claude-test", [])):
        assert renderer.media_type == "text/event-stream"
        assert data_of(renderer.waiting("m")) is None
