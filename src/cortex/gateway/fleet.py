"""What the gateway knows about its neurons.

Two writers, each of its own fields, on one event loop (so no locks):

- what the neurons report (``up``, ``error``, ``contract``, ``devices``, ``models``,
  ``digests``) is written only through ``Fleet.record_*``: by the poller, and by the
  scheduler when a load or unload answers ahead of the next poll;
- the gateway's own bookkeeping per node (``active``, ``routed_at``, ``leaving``,
  ``reserved_mb``, ``routed_prefixes``) is written by the scheduler, which owns those
  decisions.

Request handlers and the pure decisions (``placement``) only read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cortex.config import NeuronEndpoint
from cortex.protocol.fleet import GatewayPhase, ModelPhase, NodeModel, NodeView
from cortex.protocol.neuron import (
    DeviceStatus,
    ModelState,
    ModelStatus,
    NodeStatus,
    incompatibility,
)
from cortex.protocol.prefix_digest import PrefixSet, match_depth

# Chain hashes this gateway remembers sending to each (node, model): what it knows of
# a node's cache between polls, and all it knows of a neuron older than contract 1.1.
# Kept beside the neuron's digest, not replaced by it, so it may name a prefix the
# engine has since evicted; harmless: no other node holds that prefix deeper (a
# conversation that moved is deeper where it went), so no better node is passed over.
ROUTED_PREFIX_HASHES = 4096


@dataclass
class Node:
    endpoint: NeuronEndpoint
    up: bool = False
    compatible: bool = True  # False: answers, but in a contract major this gateway can't read
    contract: str | None = None
    misses: int = 0
    last_seen: float | None = None
    error: str | None = None
    devices: list[DeviceStatus] = field(default_factory=list)
    models: dict[str, ModelStatus] = field(default_factory=dict)
    # Each model's reported prefix digest, as a set for lookups.
    digests: dict[str, frozenset[str]] = field(default_factory=dict)
    # What this gateway knows before the next poll does: requests it has sent and not
    # yet finished, when it last sent one per model, models it is evicting, and memory
    # held for loads it has started.
    active: dict[str, int] = field(default_factory=dict)
    routed_at: dict[str, float] = field(default_factory=dict)
    leaving: set[str] = field(default_factory=set)
    reserved_mb: dict[str, int] = field(default_factory=dict)  # by device id
    routed_prefixes: dict[str, PrefixSet] = field(default_factory=dict)  # by model id
    # Tokens of the requests in ``active``, by model id (prompt estimate + max_tokens):
    # what routing spreads over a model's copies, since one long request weighs more
    # than several short ones.
    tokens: dict[str, int] = field(default_factory=dict)
    # Restarts of a neuron this gateway supervises (the embedded default's), read live.
    restarts: Callable[[], int] | None = None

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def usable(self) -> bool:
        """May be routed to and placed on: it answers, in a contract this gateway speaks."""
        return self.up and self.compatible

    @property
    def active_requests(self) -> int:
        return sum(self.active.values())

    def load(self) -> int:
        """How busy the node is, for least-loaded routing."""
        return sum(self.in_flight(model_id) for model_id in self.models.keys() | self.active.keys())

    def begin(self, model_id: str, tokens: int = 0) -> None:
        self.active[model_id] = self.active.get(model_id, 0) + 1
        self.tokens[model_id] = self.tokens.get(model_id, 0) + tokens
        self.routed_at[model_id] = time.time()

    def end(self, model_id: str, tokens: int = 0) -> None:
        left = self.active.get(model_id, 0) - 1
        if left > 0:
            self.active[model_id] = left
            self.tokens[model_id] = max(0, self.tokens.get(model_id, 0) - tokens)
        else:
            self.active.pop(model_id, None)
            self.tokens.pop(model_id, None)
        self.routed_at[model_id] = time.time()

    def outstanding_tokens(self, model_id: str) -> int:
        """Tokens of the requests this gateway has in flight for the model here."""
        return self.tokens.get(model_id, 0)

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

    def full(self, model_id: str) -> bool:
        """As many requests for the model as its batch holds: one more would queue."""
        model = self.models.get(model_id)
        return model is not None and self.in_flight(model_id) >= model.spec.max_batch

    def prefix_depth(self, model_id: str, chain: list[str]) -> int:
        """How many leading parts of a request's prompt (``chain``) this node likely holds
        in the model's cache: by its own report, or because this gateway sent them here."""
        routed = self.routed_prefixes.get(model_id)
        held = [self.digests.get(model_id, frozenset()), *([routed] if routed else [])]
        return match_depth(chain, *held)

    def routed_prefix(self, model_id: str, chain: list[str]) -> None:
        """This gateway sends a request with ``chain`` here."""
        routed = self.routed_prefixes.get(model_id)
        if routed is None:
            routed = self.routed_prefixes[model_id] = PrefixSet(ROUTED_PREFIX_HASHES)
        routed.add(chain)

    def busy(self, model_id: str) -> bool:
        return self.in_flight(model_id) > 0

    def last_used(self, model_id: str) -> float:
        model = self.models.get(model_id)
        return max(model.last_used if model else 0.0, self.routed_at.get(model_id, 0.0))

    def phase(self, model_id: str) -> ModelPhase | None:
        if model_id in self.leaving:
            return GatewayPhase.UNLOADING
        model = self.models.get(model_id)
        return model.state if model else None

    def view(self) -> NodeView:
        return NodeView(
            name=self.name,
            endpoint=self.endpoint.endpoint,
            up=self.up,
            compatible=self.compatible,
            contract=self.contract,
            error=self.error,
            last_seen=self.last_seen,
            devices=self.devices,
            reserved_mb=self.reserved_mb,
            restarts=self.restarts() if self.restarts else None,
            models=[
                NodeModel(
                    id=m.id,
                    state=self.phase(m.id) or m.state,
                    devices=m.devices,
                    memory_mb=m.memory_mb,
                    device_memory_mb=m.device_memory_mb,
                    in_flight=self.in_flight(m.id),
                    queued=m.queued,
                    last_used=self.last_used(m.id),
                    context_length=m.context_length,
                    pinned=m.spec.pinned,
                    priority=m.spec.priority,
                )
                for m in self.models.values()
            ],
        )


class Fleet:
    def __init__(self, endpoints: list[NeuronEndpoint], down_after_misses: int) -> None:
        self.nodes: dict[str, Node] = {e.name: Node(e) for e in endpoints}
        self._down_after = down_after_misses

    def record_status(self, name: str, status: NodeStatus) -> None:
        if (reason := incompatibility(status.contract)) is not None:
            self.record_incompatible(name, status.contract, reason)
            return
        if not self.nodes[name].up:
            # back after a restart or an outage: whatever it cached then may be gone
            self.nodes[name].routed_prefixes.clear()
        node = self._answered(name, status.contract)
        node.compatible, node.error = True, None
        node.devices = list(status.devices)
        node.models = {m.id: m for m in status.models}
        node.digests = {m.id: frozenset(m.prefix_digest) for m in status.models}
        for gone in node.routed_prefixes.keys() - node.models.keys():
            del node.routed_prefixes[gone]  # unloaded: its cache went with it

    def record_incompatible(self, name: str, contract: str | None, reason: str) -> None:
        """The node answers in a contract this gateway cannot read: shown, never used.
        Nothing else of its answer is kept (it may mean something else in that version)."""
        node = self._answered(name, contract)
        node.compatible, node.error = False, reason
        node.devices, node.models, node.digests = [], {}, {}
        node.routed_prefixes.clear()

    def record_model(self, name: str, status: ModelStatus) -> None:
        """One model's status as a load answered it, ahead of the next poll."""
        node = self.nodes[name]
        node.models[status.id] = status
        node.digests[status.id] = frozenset(status.prefix_digest)

    def record_unloaded(self, name: str, model_id: str) -> None:
        """The node unloaded the model, ahead of the next poll."""
        node = self.nodes[name]
        node.models.pop(model_id, None)
        node.routed_at.pop(model_id, None)
        node.digests.pop(model_id, None)
        node.routed_prefixes.pop(model_id, None)

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
        """Usable nodes where ``model_id`` is ready to serve."""
        return [
            node
            for node in self.nodes.values()
            if node.usable and node.phase(model_id) is ModelState.READY
        ]

    def usable(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.usable]

    def loaded_on(self, model_id: str) -> list[str]:
        return [n.name for n in self.usable() if model_id in n.models]

    def loaded_ids(self) -> set[str]:
        return {mid for n in self.usable() for mid in n.models}

    def _answered(self, name: str, contract: str | None) -> Node:
        node = self.nodes[name]
        node.up, node.misses, node.contract = True, 0, contract
        node.last_seen = time.time()
        return node
