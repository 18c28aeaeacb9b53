"""Explicit sessions: a client that names its session (``x-session-id``) is pinned to the
node that served it first, for as long as that node holds the model.

Conversations without the header are routed by where their prefix lives
(``routing.choose_holder`` over the neurons' prefix digests), which needs no memory
in the gateway and survives its restart; the pin is for clients that want one node
whatever their prompts look like.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

SESSION_HEADER = "x-session-id"


def session_key(model_id: str, headers: Mapping[str, str]) -> str | None:
    """The request's explicit session, per model; None without the header."""
    explicit = headers.get(SESSION_HEADER)
    return f"{model_id}\0id\0{explicit}" if explicit else None


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
