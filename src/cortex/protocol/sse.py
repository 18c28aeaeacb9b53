"""Server-sent events framing, written only at the HTTP edge."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
# A neuron's stream carries its prompt's token count in this header, known before the
# first token: dialects that report input tokens first (Anthropic's message_start) need it.
PROMPT_TOKENS_HEADER = "x-cortex-prompt-tokens"


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
