"""The gateway's fleet API as wire types: ``GET /fleet`` and the catalogue in ``/v1/models``.

The gateway builds these, ``cortex status``/``cortex models`` and ``/ui`` read them;
every field is always present (``None`` where the type says so), so readers need no
fallbacks. Like the neuron's contract, fields may be added, never renamed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cortex.protocol.neuron import DeviceStatus, ModelState
from cortex.spec import SamplingDefaults


class GatewayPhase(StrEnum):
    """A phase of one model on one node that only the gateway knows of."""

    UNLOADING = "unloading"  # the gateway is evicting it: no new requests go there


# One model on one node: what its neuron reports, or what the gateway is doing to it.
ModelPhase = ModelState | GatewayPhase


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a newer gateway may add fields


class NodeModel(_Wire):
    """One model on one node, as the gateway sees it (its requests in flight included)."""

    id: str
    state: ModelPhase
    devices: list[str]
    memory_mb: int
    in_flight: int
    queued: int
    last_used: float
    context_length: int | None
    pinned: bool
    priority: int
    # MB on each of ``devices`` (tensor-parallel ranks on one device summed): a model
    # over several devices is charged its share on each
    device_memory_mb: dict[str, int] = Field(default_factory=dict)


class NodeView(_Wire):
    name: str
    endpoint: str
    up: bool  # answered its last polls
    compatible: bool  # speaks this gateway's contract major; else ``error`` says why
    contract: str | None  # the neuron's contract version, once it answered
    error: str | None
    last_seen: float | None
    devices: list[DeviceStatus]
    reserved_mb: dict[str, int]  # by device: memory held for loads under way
    models: list[NodeModel]
    # Times the gateway restarted this neuron (the embedded default's local neuron, which
    # it supervises); None for a neuron it does not run.
    restarts: int | None = None


class Placement(_Wire):
    node: str
    state: ModelPhase


class CatalogueEntry(_Wire):
    """One model of the merged catalogue (a ``models.toml`` profile, or loaded somewhere)."""

    id: str
    source: str | None
    aliases: list[str]
    pinned: bool
    priority: int | None
    context_length: int | None
    nodes_allowed: list[str]
    memory_estimate_mb: int | None
    loaded_on: list[str]
    placements: list[Placement]
    # Sampling for the fields a request leaves out, as a node serving the model reports
    # it (models.toml's over the model file's); else models.toml's. None: the engine's.
    sampling_defaults: SamplingDefaults | None = None


class ScaleDecision(_Wire):
    """A model's last replica decision (``gateway/scaling.py``) and why it was made."""

    action: Literal["add", "retire"]
    node: str | None  # None: an add whose load failed
    reason: str
    at: float
    error: str | None = None  # the add's load failed: why (a retry waits)


class Replicas(_Wire):
    """A model's copies: the nodes where it is ready, its bounds, its last decision."""

    copies: list[str]
    min_replicas: int
    max_replicas: int
    last_decision: ScaleDecision | None = None


class FleetModel(CatalogueEntry):
    requests_last_min: int
    replicas: Replicas | None = None  # None: no profile, so no bounds


class EvictionView(_Wire):
    strategy: Literal["lru", "priority"]
    idle_unload_after_s: float
    defrag_after_cycles: int
    cycles: int


class FleetView(_Wire):
    """``GET /fleet``."""

    nodes: list[NodeView]
    models: list[FleetModel]
    requests_last_min: int
    eviction: EvictionView


class ListedModel(CatalogueEntry):
    """One card of ``GET /v1/models``: OpenAI's fields and the catalogue entry."""

    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelListing(_Wire):
    """``GET /v1/models`` (OpenAI's shape)."""

    object: Literal["list"] = "list"
    data: list[ListedModel]


class FleetRequest(_Wire):
    """``POST /fleet/load`` and ``/fleet/unload``: a model (id or alias), on one named
    node or wherever the scheduler chooses (load) / it is loaded (unload)."""

    model: str
    node: str | None = None


class LoadAnswer(_Wire):
    model: str
    node: str
    loaded: Literal[True] = True


class UnloadAnswer(_Wire):
    model: str
    nodes: list[str]
    unloaded: Literal[True] = True


class DefragAnswer(_Wire):
    moved: int  # models moved to free one device's memory in one piece


class GatewayHealth(_Wire):
    """``GET /health``: liveness, 200 while the gateway runs whatever its nodes do."""

    status: Literal["ok"] = "ok"
    nodes_up: int
    nodes: int


class Ready(_Wire):
    """``GET /ready`` (200): some usable node has these models ready to serve."""

    status: Literal["ready"] = "ready"
    models: list[str]


class NotReady(_Wire):
    """``GET /ready`` (503, with Retry-After): no node is up with a model ready."""

    status: Literal["not ready"] = "not ready"
    reason: str
