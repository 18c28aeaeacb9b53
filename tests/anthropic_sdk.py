"""The official Anthropic SDK as an oracle: our bytes in, what the SDK makes of them out.

A client over ``httpx.MockTransport`` answers every request with the body
under test, so the SDK's own SSE decoder (it dispatches on ``event:`` names),
stream accumulator and response models judge the translator's output. No
network, no server.
"""

from __future__ import annotations

import json

import anthropic
import httpx2 as httpx  # the transport library this SDK version is built on
from anthropic.types import Message

_REQUEST = {
    "model": "claude-test",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}


def _client(body: bytes, content_type: str, status: int = 200) -> anthropic.Anthropic:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    transport = httpx.MockTransport(handler)
    return anthropic.Anthropic(
        api_key="test",
        base_url="http://cortex.test",
        max_retries=0,
        http_client=httpx.Client(transport=transport),
    )


def final_message(sse: bytes) -> Message:
    """What ``messages.stream(...).get_final_message()`` returns for this SSE body."""
    with _client(sse, "text/event-stream").messages.stream(**_REQUEST) as stream:  # type: ignore[arg-type]
        return stream.get_final_message()


def raw_events(sse: bytes) -> list[object]:
    """The events ``messages.create(stream=True)`` yields (ping included, error raises)."""
    client = _client(sse, "text/event-stream")
    return list(client.messages.create(**_REQUEST, stream=True))  # type: ignore[call-overload]


def created_message(body: dict) -> Message:
    """What ``messages.create(...)`` returns for this JSON body."""
    return _client(json.dumps(body).encode(), "application/json").messages.create(**_REQUEST)  # type: ignore[call-overload]
