"""What the gateway knows about its neurons, refreshed by the poller.

``Fleet`` is the single owner of this state; the poller writes it, request
handlers and decisions read immutable-enough snapshots of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cortex.config import NeuronEndpoint


class ModelPhase(StrEnum):
    """State of one model on one node, as the neuron reports it."""

    LOADING = "loading"
    READY = "ready"
    POISONED = "poisoned"
    RECOVERING = "recovering"

    @classmethod
    def parse(cls, value: str) -> ModelPhase:
        try:
            return cls(value)
        except ValueError:
            return cls.POISONED  # an unknown state is not one to route to


@dataclass
class ModelOnNode:
    id: str
    phase: ModelPhase
    in_flight: int = 0
    queued: int = 0
    memory_mb: int = 0
    devices: list[str] = field(default_factory=list)
    last_used: float = 0.0
    context_length: int | None = None

    @classmethod
    def from_status(cls, entry: dict[str, Any]) -> ModelOnNode:
        return cls(
            id=str(entry["id"]),
            phase=ModelPhase.parse(str(entry.get("state", ""))),
            in_flight=int(entry.get("in_flight") or 0),
            queued=int(entry.get("queued") or 0),
            memory_mb=int(entry.get("memory_mb") or 0),
            devices=list(entry.get("devices") or []),
            last_used=float(entry.get("last_used") or 0.0),
            context_length=entry.get("context_length"),
        )


@dataclass
class Node:
    endpoint: NeuronEndpoint
    up: bool = False
    misses: int = 0
    last_seen: float | None = None
    error: str | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, ModelOnNode] = field(default_factory=dict)
    # Requests this gateway has sent and not yet finished: fresher than the last poll.
    active_requests: int = 0

    @property
    def name(self) -> str:
        return self.endpoint.name

    def load(self) -> int:
        """How busy the node is, for least-loaded routing."""
        polled = sum(m.in_flight + m.queued for m in self.models.values())
        return max(polled, self.active_requests)

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "endpoint": self.endpoint.endpoint,
            "up": self.up,
            "error": self.error,
            "last_seen": self.last_seen,
            "devices": self.devices,
            "models": [
                {
                    "id": m.id,
                    "state": m.phase.value,
                    "devices": m.devices,
                    "memory_mb": m.memory_mb,
                    "in_flight": m.in_flight,
                    "queued": m.queued,
                    "last_used": m.last_used,
                    "context_length": m.context_length,
                }
                for m in self.models.values()
            ],
        }


class Fleet:
    def __init__(self, endpoints: list[NeuronEndpoint], down_after_misses: int) -> None:
        self.nodes: dict[str, Node] = {e.name: Node(e) for e in endpoints}
        self._down_after = down_after_misses

    def record_status(self, name: str, status: dict[str, Any]) -> None:
        node = self.nodes[name]
        node.up, node.misses, node.error = True, 0, None
        node.last_seen = time.time()
        node.devices = list(status.get("devices") or [])
        node.models = {
            m.id: m for m in (ModelOnNode.from_status(e) for e in status.get("models") or [])
        }

    def record_model(self, name: str, entry: dict[str, Any]) -> None:
        """One model's status as a load answered it, ahead of the next poll."""
        model = ModelOnNode.from_status(entry)
        self.nodes[name].models[model.id] = model

    def record_miss(self, name: str, error: str) -> None:
        node = self.nodes[name]
        node.misses += 1
        node.error = error
        if node.misses >= self._down_after:
            node.up = False

    def mark_down(self, name: str, error: str) -> None:
        """A request could not reach the node: stop routing to it until it answers a poll."""
        node = self.nodes[name]
        node.up, node.error = False, error
        node.misses = max(node.misses, self._down_after)

    def holders(self, model_id: str) -> list[Node]:
        """Up nodes where ``model_id`` is ready to serve."""
        return [
            node
            for node in self.nodes.values()
            if node.up and (m := node.models.get(model_id)) and m.phase is ModelPhase.READY
        ]

    def loaded_on(self, model_id: str) -> list[str]:
        return [n.name for n in self.nodes.values() if n.up and model_id in n.models]

    def loaded_ids(self) -> set[str]:
        return {mid for n in self.nodes.values() if n.up for mid in n.models}
