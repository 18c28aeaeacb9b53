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
    UNLOADING = "unloading"  # the gateway is evicting it: no new requests go there

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
    pinned: bool = False
    priority: int = 50

    @classmethod
    def from_status(cls, entry: dict[str, Any]) -> ModelOnNode:
        spec = entry.get("spec") or {}
        return cls(
            id=str(entry["id"]),
            phase=ModelPhase.parse(str(entry.get("state", ""))),
            in_flight=int(entry.get("in_flight") or 0),
            queued=int(entry.get("queued") or 0),
            memory_mb=int(entry.get("memory_mb") or 0),
            devices=list(entry.get("devices") or []),
            last_used=float(entry.get("last_used") or 0.0),
            context_length=entry.get("context_length"),
            pinned=bool(spec.get("pinned", False)),
            priority=int(spec.get("priority", 50)),
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
    # What this gateway knows before the next poll does: requests it has sent and not
    # yet finished, when it last sent one per model, models it is evicting, and memory
    # held for loads it has started.
    active: dict[str, int] = field(default_factory=dict)
    routed_at: dict[str, float] = field(default_factory=dict)
    leaving: set[str] = field(default_factory=set)
    reserved_mb: dict[str, int] = field(default_factory=dict)  # by device id

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def active_requests(self) -> int:
        return sum(self.active.values())

    def load(self) -> int:
        """How busy the node is, for least-loaded routing."""
        return sum(self.in_flight(model_id) for model_id in self.models.keys() | self.active.keys())

    def begin(self, model_id: str) -> None:
        self.active[model_id] = self.active.get(model_id, 0) + 1
        self.routed_at[model_id] = time.time()

    def end(self, model_id: str) -> None:
        left = self.active.get(model_id, 0) - 1
        if left > 0:
            self.active[model_id] = left
        else:
            self.active.pop(model_id, None)
        self.routed_at[model_id] = time.time()

    def in_flight(self, model_id: str) -> int:
        """Requests running or queued for the model here, as best this gateway knows."""
        active = self.active.get(model_id, 0)
        model = self.models.get(model_id)
        polled = model.in_flight + model.queued if model else 0
        # A poll older than this gateway's last request start or end on the model may or
        # may not count it; only a newer one also tells about requests from elsewhere.
        if (self.last_seen or 0.0) <= self.routed_at.get(model_id, 0.0):
            return active
        return max(active, polled)

    def busy(self, model_id: str) -> bool:
        return self.in_flight(model_id) > 0

    def last_used(self, model_id: str) -> float:
        model = self.models.get(model_id)
        return max(model.last_used if model else 0.0, self.routed_at.get(model_id, 0.0))

    def phase(self, model_id: str) -> ModelPhase | None:
        if model_id in self.leaving:
            return ModelPhase.UNLOADING
        model = self.models.get(model_id)
        return model.phase if model else None

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "endpoint": self.endpoint.endpoint,
            "up": self.up,
            "error": self.error,
            "last_seen": self.last_seen,
            "devices": self.devices,
            "reserved_mb": self.reserved_mb,
            "models": [
                {
                    "id": m.id,
                    "state": (self.phase(m.id) or m.phase).value,
                    "devices": m.devices,
                    "memory_mb": m.memory_mb,
                    "in_flight": self.in_flight(m.id),
                    "queued": m.queued,
                    "last_used": self.last_used(m.id),
                    "context_length": m.context_length,
                    "pinned": m.pinned,
                    "priority": m.priority,
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
            if node.up and node.phase(model_id) is ModelPhase.READY
        ]

    def loaded_on(self, model_id: str) -> list[str]:
        return [n.name for n in self.nodes.values() if n.up and model_id in n.models]

    def loaded_ids(self) -> set[str]:
        return {mid for n in self.nodes.values() if n.up for mid in n.models}
