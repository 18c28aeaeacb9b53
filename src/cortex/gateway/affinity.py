"""Session affinity: a conversation keeps going to the node that holds its prefix in cache.

A follow-up request repeats the conversation so far, so everything up to and
including the first user turn is the same in every request of one conversation;
its hash is the session key. Conversations that open identically share a key too,
which is what a prefix cache wants. A client may name its session explicitly with
the ``x-session-id`` header.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

SESSION_HEADER = "x-session-id"


def session_key(model_id: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    explicit = headers.get(SESSION_HEADER)
    if explicit:
        return f"{model_id}\0id\0{explicit}"
    opening = _opening(body)
    if opening is None:
        return None
    digest = hashlib.blake2b(
        json.dumps(opening, sort_keys=True, default=str).encode(), digest_size=16
    )
    return f"{model_id}\0{digest.hexdigest()}"


def _opening(body: Mapping[str, Any]) -> Any:
    messages = body.get("messages")
    if isinstance(messages, list):
        for index, message in enumerate(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return [body.get("system"), messages[: index + 1]]
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, str) and prompt:
        return prompt[:2048]  # a long shared document opening is prefix enough
    return None


class AffinityTable:
    """Session key -> node name, bounded, least recently used entries dropped first."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._nodes: OrderedDict[str, str] = OrderedDict()

    def get(self, key: str) -> str | None:
        node = self._nodes.get(key)
        if node is not None:
            self._nodes.move_to_end(key)
        return node

    def remember(self, key: str, node: str) -> None:
        self._nodes[key] = node
        self._nodes.move_to_end(key)
        while len(self._nodes) > self._capacity:
            self._nodes.popitem(last=False)

    def __len__(self) -> int:
        return len(self._nodes)
