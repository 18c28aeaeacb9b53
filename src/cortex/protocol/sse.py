"""Server-sent events framing, written only at the HTTP edge."""

from __future__ import annotations

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def data_frame(payload: BaseModel | bytes) -> bytes:
    """One ``data:`` frame; pydantic models are dumped without null noise only where safe."""
    body = payload if isinstance(payload, bytes) else payload.model_dump_json().encode()
    return b"data: " + body + b"\n\n"


def event_frame(event: str, payload: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"
