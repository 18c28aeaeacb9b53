"""Server-sent events framing, written only at the HTTP edge."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
# Response headers of every stream: no proxy between may cache it or hold it back.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# A neuron's stream carries its prompt's token count in this header, known before the
# first token: dialects that report input tokens first (Anthropic's message_start) need it.
PROMPT_TOKENS_HEADER = "x-cortex-prompt-tokens"
# What a neuron measured for one generation (token counts, its time to first token), for
# the gateway's metrics: a header on a plain answer, an SSE comment (ignored by every
# client) just before ``[DONE]`` on a stream, so the gateway never parses each frame.
REPORT_HEADER = "x-cortex-report"
_REPORT_COMMENT = b": cortex-report "


def report_frame(report: dict[str, float | int | None]) -> bytes:
    return _REPORT_COMMENT + json.dumps(report, separators=(",", ":")).encode() + b"\n\n"


def is_report(event: bytes) -> bool:
    return event.startswith(_REPORT_COMMENT)


def parse_report(text: bytes | str | None) -> dict[str, Any]:
    """The report in a header value or in a stream's last bytes; ``{}`` when there is none."""
    if not text:
        return {}
    raw = text.encode() if isinstance(text, str) else text
    start = raw.rfind(_REPORT_COMMENT)
    if start >= 0:
        end = raw.find(b"\n", start)
        raw = raw[start + len(_REPORT_COMMENT) : end if end >= 0 else None]
    try:
        report = json.loads(raw)
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def data_frame(payload: BaseModel | bytes) -> bytes:
    """One ``data:`` frame; pydantic models are dumped without null noise only where safe."""
    body = payload if isinstance(payload, bytes) else payload.model_dump_json().encode()
    return b"data: " + body + b"\n\n"


def event_frame(event: str, payload: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


async def events(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Each whole event of a byte stream (its blank line included), whatever the
    chunking; bytes after the last blank line are no event."""
    buffer, scan = b"", 0
    async for chunk in chunks:
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n\n", scan)) >= 0:
            yield buffer[start : end + 2]
            start = scan = end + 2
        buffer = buffer[start:]
        scan = max(0, len(buffer) - 1)  # a blank line may straddle two chunks


def data_of(event: bytes) -> bytes | None:
    """The ``data:`` payload of one event; ``None`` for a comment (or an event without data)."""
    lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line[:5] == b"data:"]
    return b"\n".join(lines) if lines else None
