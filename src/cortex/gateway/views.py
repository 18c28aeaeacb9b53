"""What the gateway shows of its models: one entry per model, shared by ``/v1/models``
and ``/fleet`` so both say the same thing."""

from __future__ import annotations

import time
from typing import Any

from cortex.gateway.state import GatewayState
from cortex.protocol.fleet import CatalogueEntry, Placement


def catalogue_entries(state: GatewayState) -> list[CatalogueEntry]:
    fleet, catalogue, scheduler = state.fleet, state.catalogue, state.scheduler
    entries = []
    for model_id in catalogue.ids(fleet.loaded_ids()):
        profile = catalogue.profiles.get(model_id)
        entries.append(
            CatalogueEntry(
                id=model_id,
                source=profile.source if profile else None,
                aliases=profile.aliases if profile else [],
                pinned=bool(profile and profile.pinned),
                priority=profile.priority if profile else None,
                context_length=profile.context_length if profile else None,
                nodes_allowed=profile.nodes if profile else [],
                memory_estimate_mb=scheduler.estimates.get(model_id),
                loaded_on=fleet.loaded_on(model_id),
                placements=[
                    Placement(node=node.name, state=phase)
                    for node in fleet.usable()
                    if (phase := node.phase(model_id)) is not None
                ],
            )
        )
    return entries


def model_entries(state: GatewayState) -> list[dict[str, Any]]:
    """The catalogue as the JSON objects ``/v1/models`` extends."""
    return [entry.model_dump(mode="json") for entry in catalogue_entries(state)]


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
