"""The fleet as placement sees it: one ``Room`` per device of every eligible node."""

from __future__ import annotations

from collections.abc import Iterable

from cortex.gateway.fleet import Node
from cortex.gateway.placement import Resident, Room
from cortex.protocol.neuron import DeviceStatus, ModelState
from cortex.spec import ModelSpec


def rooms_of(nodes: Iterable[Node], profiles: dict[str, ModelSpec]) -> list[Room]:
    return [room for node in nodes for room in _node_rooms(node, profiles)]


def _node_rooms(node: Node, profiles: dict[str, ModelSpec]) -> list[Room]:
    rooms = []
    for device in node.devices:
        residents = tuple(
            _resident(node, model_id, profiles.get(model_id))
            for model_id, model in node.models.items()
            if device.id in model.devices and model_id not in node.leaving
        )
        free = _free_mb(device) - node.reserved_mb.get(device.id, 0)
        rooms.append(Room(node.name, device.id, max(0, free), residents))
    return rooms


def _free_mb(device: DeviceStatus) -> int:
    """What the device can give a new model: its free memory, within the node's budget."""
    if device.memory_budget_mb:
        budget_left = device.memory_budget_mb - device.memory_used_by_models_mb
        return min(device.memory_free_mb, budget_left)
    return device.memory_free_mb


def _resident(node: Node, model_id: str, profile: ModelSpec | None) -> Resident:
    model = node.models[model_id]
    return Resident(
        model_id=model_id,
        memory_mb=model.memory_mb,
        last_used=node.last_used(model_id),
        pinned=model.spec.pinned or bool(profile and profile.pinned),
        priority=profile.priority if profile else model.spec.priority,
        # a model still loading or recovering is not idle either
        busy=node.busy(model_id) or model.state is not ModelState.READY,
        movable=profile is not None,
        allowed_nodes=frozenset(profile.nodes) if profile else frozenset(),
    )
