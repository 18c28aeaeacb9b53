"""What the gateway shows of its models: one entry per model, shared by ``/v1/models``
and ``/fleet`` so both say the same thing."""

from __future__ import annotations

import time
from typing import Any

from cortex.gateway.state import GatewayState


def model_entries(state: GatewayState) -> list[dict[str, Any]]:
    fleet, catalogue, scheduler = state.fleet, state.catalogue, state.scheduler
    entries = []
    for model_id in catalogue.ids(fleet.loaded_ids()):
        profile = catalogue.profiles.get(model_id)
        estimate = scheduler.estimates.get(model_id)
        entries.append(
            {
                "id": model_id,
                "source": profile.source if profile else None,
                "aliases": profile.aliases if profile else [],
                "pinned": bool(profile and profile.pinned),
                "priority": profile.priority if profile else None,
                "context_length": profile.context_length if profile else None,
                "nodes_allowed": profile.nodes if profile else [],
                "memory_estimate_mb": estimate["memory_mb"] if estimate else None,
                "loaded_on": fleet.loaded_on(model_id),
                "placements": [
                    {"node": node.name, "state": phase.value}
                    for node in fleet.nodes.values()
                    if node.up and (phase := node.phase(model_id)) is not None
                ],
            }
        )
    return entries


def anthropic_model_list(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """``GET /v1/models`` in Anthropic's shape, for clients that send ``anthropic-version``."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data = [
        {"type": "model", "id": e["id"], "display_name": e["id"], "created_at": now}
        for e in entries
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
