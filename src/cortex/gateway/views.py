"""What the gateway shows of its models: one entry per model, shared by ``/v1/models``
and ``/fleet`` so both say the same thing."""

from __future__ import annotations

import time
from typing import Any

from cortex.gateway.state import GatewayState
from cortex.protocol.anthropic import ModelInfo, ModelPage
from cortex.protocol.fleet import CatalogueEntry, Placement
from cortex.spec import ModelSpec, SamplingDefaults


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
                sampling_defaults=_sampling_defaults(state, model_id, profile),
            )
        )
    return entries


def _sampling_defaults(
    state: GatewayState, model_id: str, profile: ModelSpec | None
) -> SamplingDefaults | None:
    """What a node serving the model reports (the file's defaults under models.toml's),
    else what models.toml says before any node has read the file."""
    for node in state.fleet.usable():
        status = node.models.get(model_id)
        if status is not None and status.sampling_defaults is not None:
            return status.sampling_defaults
    return profile.sampling if profile else None


def model_entries(state: GatewayState) -> list[dict[str, Any]]:
    """The catalogue as the JSON objects ``/v1/models`` extends."""
    return [entry.model_dump(mode="json") for entry in catalogue_entries(state)]


def anthropic_model_list(entries: list[dict[str, Any]]) -> ModelPage:
    """``GET /v1/models`` in Anthropic's shape, for clients that send ``anthropic-version``."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data = [ModelInfo(id=e["id"], display_name=e["id"], created_at=now) for e in entries]
    return ModelPage(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
