"""The fleet as placement sees it: one ``Room`` per device of every eligible node."""

from __future__ import annotations

from collections.abc import Iterable

from cortex.gateway.fleet import Node
from cortex.gateway.placement import Resident, Room
from cortex.protocol.neuron import DeviceStatus, ModelState, ModelStatus
from cortex.spec import ModelSpec


def rooms_of(
    nodes: Iterable[Node], profiles: dict[str, ModelSpec], model_format: str | None = None
) -> list[Room]:
    """Every device's room; with ``model_format``, only the devices whose engine for it
    can run there (the neuron refuses the others, so placement must not count them)."""
    return [room for node in nodes for room in _node_rooms(node, profiles, model_format)]


def runs_on(device: DeviceStatus, model_format: str | None) -> bool:
    """Whether the node's install can run a model of ``model_format`` on ``device``: a
    GPU next to a CPU-only llama.cpp build takes no GGUF model (contract 1.3's
    ``engines``; a neuron older than that says nothing, and is taken at its word)."""
    return not (model_format == "gguf" and device.engines.get("gguf") == "cpu-only build")


def _node_rooms(node: Node, profiles: dict[str, ModelSpec], model_format: str | None) -> list[Room]:
    rooms = []
    has_gpus = any(device.id != "cpu" for device in node.devices)
    for device in node.devices:
        if not runs_on(device, model_format):
            continue
        residents = tuple(
            _resident(node, model_id, device.id, profiles.get(model_id))
            for model_id, model in node.models.items()
            if device.id in model.devices and model_id not in node.leaving
        )
        free = _free_mb(device) - node.reserved_mb.get(device.id, 0)
        rooms.append(Room(node.name, device.id, max(0, free), residents, _ranks(device, has_gpus)))
    return rooms


def _ranks(device: DeviceStatus, has_gpus: bool) -> int:
    """Ranks of one multi-device model the device may hold; a neuron older than contract
    1.4 does not say: a GPU one, the CPU one where it is the only device, else none."""
    if device.tp_ranks is not None:
        return device.tp_ranks
    return 1 if device.id != "cpu" or not has_gpus else 0


def _memory_on(model: ModelStatus, device_id: str) -> int:
    """MB a model holds on one of its devices: what the neuron says (1.4), else an even
    part of its memory (an older neuron's models are on one device)."""
    if model.device_memory_mb:
        return model.device_memory_mb.get(device_id, 0)
    return model.memory_mb // max(1, len(set(model.devices)))


def _free_mb(device: DeviceStatus) -> int:
    """What the device can give a new model: its free memory, within the node's budget."""
    if device.memory_budget_mb:
        budget_left = device.memory_budget_mb - device.memory_used_by_models_mb
        return min(device.memory_free_mb, budget_left)
    return device.memory_free_mb


def _resident(node: Node, model_id: str, device_id: str, profile: ModelSpec | None) -> Resident:
    model = node.models[model_id]
    return Resident(
        model_id=model_id,
        memory_mb=_memory_on(model, device_id),
        last_used=node.last_used(model_id),
        pinned=model.spec.pinned or bool(profile and profile.pinned),
        priority=profile.priority if profile else model.spec.priority,
        # a model still loading or recovering is not idle either
        busy=node.busy(model_id) or model.state is not ModelState.READY,
        movable=profile is not None,
        allowed_nodes=frozenset(profile.nodes) if profile else frozenset(),
        width=max(1, len(model.devices)),
    )
