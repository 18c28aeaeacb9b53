"""Identifiers across dialects: message ids and a reversible tool-call id mapping.

Anthropic clients need tool ids matching ``^[a-zA-Z0-9_-]+$`` (``toolu_…``);
backends mint whatever they like (``call_3f9a…``, ``call.abc:1``). The mapping
needs no server state: the backend id travels inside the Anthropic id.

    backend id                      Anthropic id
    call_3f9a                       toolu_call_3f9a            safe: prefixed as is
    call.abc:1                      toolu_b64-Y2FsbC5hYmM6MQ   otherwise: base64url, no padding
    b64-x (safe, but the marker)    toolu_b64-YjY0LXg          encoded, so decoding stays exact

Backwards, ``toolu_b64-<base64url>`` decodes and any other ``toolu_<rest>``
gives ``<rest>``. Ids the gateway never minted (a conversation begun on
another server) do not start with ``toolu_`` or do not decode: they go to the
backend unchanged, which only needs them to agree between the ``tool_use`` and
its ``tool_result`` (both go through the same function).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid

TOOL_PREFIX = "toolu_"
_ENCODED = "b64-"
_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def to_anthropic_tool_id(backend_id: str) -> str:
    """The ``toolu_…`` id a client sees for a backend's tool-call id."""
    if _SAFE.fullmatch(backend_id) and not backend_id.startswith(_ENCODED):
        return TOOL_PREFIX + backend_id
    encoded = base64.urlsafe_b64encode(backend_id.encode()).decode().rstrip("=")
    return TOOL_PREFIX + _ENCODED + encoded


def to_backend_tool_id(anthropic_id: str) -> str:
    """The id the backend originally minted; the inverse of ``to_anthropic_tool_id``."""
    if not anthropic_id.startswith(TOOL_PREFIX):
        return anthropic_id
    rest = anthropic_id[len(TOOL_PREFIX) :]
    if not rest.startswith(_ENCODED):
        return rest
    encoded = rest[len(_ENCODED) :]
    try:
        decoded = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return rest  # not one of ours: pass it on as the client wrote it
    # Lenient base64 accepts non-canonical text; only our own encoding decodes.
    return decoded if to_anthropic_tool_id(decoded) == anthropic_id else rest


def message_id(backend_id: str | None) -> str:
    """``msg_…`` from a completion id, deterministic so a stream and its replay agree."""
    tail = re.sub(r"[^A-Za-z0-9]", "", backend_id or "")
    return "msg_" + (tail or uuid.uuid4().hex[:24])


def fallback_call_id(message: str, index: int) -> str:
    """A backend id for a tool call the backend sent without one: unique per message."""
    return f"{message}_{index}"
