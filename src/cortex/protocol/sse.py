"""Server-sent events framing, written only at the HTTP edge."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
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


async def data_payloads(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The ``data:`` payload of each event in a byte stream, whatever its chunking."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        while (end := buffer.find(b"\n\n")) >= 0:
            event, buffer = buffer[:end], buffer[end + 2 :]
            lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line[:5] == b"data:"]
            if lines:
                yield b"\n".join(lines)
