"""What the gateway shows of its models: one entry per model, shared by ``/v1/models``,
``/fleet`` and Ollama's ``/api/tags``, ``/api/ps`` and ``/api/show``, so all say the
same thing."""

from __future__ import annotations

import hashlib
import math
import re
import time
from typing import Any

from cortex.gateway.state import GatewayState
from cortex.protocol import ollama as ol
from cortex.protocol.anthropic import ModelInfo, ModelPage
from cortex.protocol.fleet import CatalogueEntry, Placement, Replicas, ScaleDecision
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


def replicas_view(state: GatewayState, model_id: str) -> Replicas | None:
    """The model's copies and last scale decision, for ``/fleet``."""
    profile = state.catalogue.profiles.get(model_id)
    if profile is None:
        return None
    control = state.scheduler.replicas
    last = control.last.get(model_id)
    return Replicas(
        copies=control.copies(model_id),
        min_replicas=profile.min_replicas,
        max_replicas=profile.max_replicas,
        last_decision=ScaleDecision(**last.__dict__) if last else None,
    )


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


# --- Ollama's views ------------------------------------------------------------------

# Far in the future: how Ollama reports a model kept loaded for good (keep_alive < 0).
_FOREVER = 253402300799.0  # 9999-12-31T23:59:59Z
_PARAMETERS = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?[MBT])(?![a-z])", re.IGNORECASE)
_QUANT = re.compile(r"\b((?:I?Q\d[\w]*)|F16|BF16|F32)\b", re.IGNORECASE)


def ollama_details(model_id: str, source: str | None, quant: str | None = None) -> ol.Details:
    """What can be told of a model from its id and source without reading its file:
    the format, a size such as "135M" and a quantisation such as "Q4_1" where the
    names carry them."""
    names = f"{model_id} {source or ''}"
    gguf = bool(quant) or (source or "").lower().endswith(".gguf")
    size = _PARAMETERS.search(names.replace("_", " ").replace("-", " "))
    level = quant or (m.group(1).upper() if (m := _QUANT.search(source or "")) else "")
    return ol.Details(
        format="gguf" if gguf else "safetensors",
        family="",
        families=[],
        parameter_size=size.group(1).upper() if size else "",
        quantization_level=level,
    )


def ollama_digest(model_id: str, source: str | None) -> str:
    """A stable digest of the profile (not of the weights, which the gateway never reads)."""
    return hashlib.sha256(f"{model_id}\n{source or ''}".encode()).hexdigest()


def ollama_tags(state: GatewayState) -> ol.Tags:
    now = ol.created_at()
    models = []
    for entry in catalogue_entries(state):
        profile = state.catalogue.profiles.get(entry.id)
        models.append(
            ol.TagModel(
                name=entry.id,
                model=entry.id,
                modified_at=now,
                size=(entry.memory_estimate_mb or 0) * 2**20,
                digest=ollama_digest(entry.id, entry.source),
                details=ollama_details(entry.id, entry.source, profile.quant if profile else None),
            )
        )
    return ol.Tags(models=models)


def ollama_running(state: GatewayState) -> ol.Running:
    """One entry per (node, model): its memory, and when it would be unloaded for idling
    (its client's keep_alive, else ``idle_unload_after_s``; never for a pinned model)."""
    idle_after = state.config.eviction.idle_unload_after_s
    models = []
    for node in state.fleet.usable():
        for status in node.models.values():
            size = status.memory_mb * 2**20
            on_gpu = any(not device.startswith("cpu") for device in status.devices)
            after = state.scheduler.keep_alive.get(status.id, idle_after or math.inf)
            forever = status.spec.pinned or after == math.inf
            expires = _FOREVER if forever else node.last_used(status.id) + after
            models.append(
                ol.RunningModel(
                    name=status.id,
                    model=status.id,
                    size=size,
                    digest=ollama_digest(status.id, status.spec.source),
                    details=ollama_details(status.id, status.spec.source, status.spec.quant),
                    expires_at=ol.created_at(expires),
                    size_vram=size if on_gpu else 0,
                    context_length=status.context_length,
                    node=node.name,
                )
            )
    return ol.Running(models=models)


def ollama_show(state: GatewayState, model_id: str) -> ol.ShowAnswer:
    entry = next(e for e in catalogue_entries(state) if e.id == model_id)
    profile = state.catalogue.profiles.get(model_id)
    sampling = entry.sampling_defaults
    parameters = [
        f"{'repeat_penalty' if name == 'repetition_penalty' else name} {value}"
        for name, value in (sampling.model_dump() if sampling else {}).items()
        if value is not None
    ]
    context = entry.context_length or next(
        (n.models[model_id].context_length for n in state.fleet.usable() if model_id in n.models),
        None,
    )
    modelfile = [f"# Served by cortex from models.toml\nFROM {entry.source or model_id}"]
    modelfile += [f"PARAMETER {line}" for line in parameters]
    return ol.ShowAnswer(
        modelfile="\n".join(modelfile) + "\n",
        parameters="\n".join(parameters),
        template="",  # the neuron applies the model file's own chat template
        details=ollama_details(model_id, entry.source, profile.quant if profile else None),
        model_info={"general.architecture": "cortex", "cortex.context_length": context},
        capabilities=["completion", "tools"],
        modified_at=ol.created_at(),
    )
