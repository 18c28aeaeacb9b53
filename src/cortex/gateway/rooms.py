"""The fleet as placement sees it: one ``Room`` per device of every eligible node."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cortex.gateway.fleet import ModelPhase, Node
from cortex.gateway.placement import Resident, Room
from cortex.spec import ModelSpec


def rooms_of(nodes: Iterable[Node], profiles: dict[str, ModelSpec]) -> list[Room]:
    return [room for node in nodes for room in _node_rooms(node, profiles)]


def _node_rooms(node: Node, profiles: dict[str, ModelSpec]) -> list[Room]:
    rooms = []
    for device in node.devices:
        device_id = str(device.get("id"))
        residents = tuple(
            _resident(node, model_id, profiles.get(model_id))
            for model_id, model in node.models.items()
            if device_id in model.devices and model_id not in node.leaving
        )
        free = _free_mb(device, node, device_id) - node.reserved_mb.get(device_id, 0)
        rooms.append(Room(node.name, device_id, max(0, free), residents))
    return rooms


def _free_mb(device: dict[str, Any], node: Node, device_id: str) -> int:
    """What the device can give a new model: its free memory, within the node's budget."""
    free = int(device.get("memory_free_mb") or 0)
    budget = device.get("memory_budget_mb")
    if budget:
        used = device.get("memory_used_by_models_mb")
        if used is None:
            used = sum(m.memory_mb for m in node.models.values() if device_id in m.devices)
        free = min(free, int(budget) - int(used))
    return free


def _resident(node: Node, model_id: str, profile: ModelSpec | None) -> Resident:
    model = node.models[model_id]
    return Resident(
        model_id=model_id,
        memory_mb=model.memory_mb,
        last_used=node.last_used(model_id),
        pinned=model.pinned or bool(profile and profile.pinned),
        priority=profile.priority if profile else model.priority,
        # a model still loading or recovering is not idle either
        busy=node.busy(model_id) or model.phase is not ModelPhase.READY,
        movable=profile is not None,
        allowed_nodes=frozenset(profile.nodes) if profile else frozenset(),
    )
