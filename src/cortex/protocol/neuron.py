"""The neuron's API as wire types: what a neuron answers and accepts, and the gateway reads.

The neuron serialises through these models and the gateway parses through them, so
both sides agree on every field by construction. Wire names are part of the
operator-facing contract (``curl /status``): fields may be added, never renamed.

Versioning: ``/health`` and ``/status`` carry ``contract``, ``MAJOR.MINOR``. A minor
release only adds fields (readers ignore what they do not know); a major release may
change anything, so a gateway uses only neurons of its own major (``incompatibility``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cortex.spec import ModelSpec, SamplingDefaults

# 1.1: ModelStatus.prefix_digest (1.0 neurons report none; routing then falls back to
# what this gateway itself sent where, and to least-loaded).
# 1.2: LoadAnswer.outcome (a load of a model already loading joins it); a 507 from
# /models/load carries MemoryRefusal's numbers; a load still fetching its files is
# listed in /status as ``loading`` on no device yet.
# 1.3: GET /requests/{request_id}: a finished generation's counts (FinishedRequest), so
# the gateway can account a stream its client left, which ended with no report;
# DeviceStatus.engines (what llama.cpp and torch can do on each device).
# 1.4: a model over several devices. POST /models/load?devices=cuda:0,cuda:1 names the
# devices the gateway placed it on, main first (a device named twice: two CPU ranks);
# without it the neuron picks. DeviceStatus.tp_ranks, ModelStatus.device_memory_mb,
# EstimateAnswer.shares_mb. A 1.3 neuron ignores the query and picks its own devices.
CONTRACT_VERSION = "1.4"


def contract_major(version: str) -> str:
    return version.split(".", 1)[0]


def incompatibility(contract: str | None) -> str | None:
    """Why a neuron speaking ``contract`` cannot be used by this side, or None when it can."""
    ours = f"{contract_major(CONTRACT_VERSION)}.x"
    if not contract:
        return f"neuron speaks no contract version (older than 1.0); this gateway speaks {ours}"
    if contract_major(contract) != contract_major(CONTRACT_VERSION):
        return f"neuron speaks contract {contract}; this gateway speaks {ours}"
    return None


class ModelState(StrEnum):
    """A model's lifecycle on its neuron (transitions: ``neuron/runtime/manager.py``)."""

    LOADING = "loading"
    READY = "ready"
    POISONED = "poisoned"
    RECOVERING = "recovering"


class _Wire(BaseModel):
    # A newer minor version may add fields: ignored, not refused.
    model_config = ConfigDict(extra="ignore")


# --- GET /health, GET /status, GET /models ------------------------------------------


class Health(_Wire):
    status: Literal["ok"] = "ok"
    contract: str = CONTRACT_VERSION


class DeviceStatus(_Wire):
    id: str  # "cpu" or "cuda:N"
    name: str
    memory_total_mb: int
    memory_free_mb: int
    memory_budget_mb: int | None  # the node's --memory-budget-mb, per device
    memory_used_by_models_mb: int
    # 1.3: what each engine can do here, as the node's install was built: "gguf" is
    # "cpu", "cuda" or "cpu-only build" (a GPU this llama.cpp cannot use: no GGUF model
    # is placed on it); "dense" is "cpu", "cuda", "cpu-only torch" or "not installed".
    engines: dict[str, str] = Field(default_factory=dict)
    # 1.4: ranks of one multi-device model this device may hold: 1 for a GPU; the CPU
    # of a GPU-less node its --cpu-tp-ranks; 0 for the CPU of a GPU node (it takes no
    # part there). None from an older neuron.
    tp_ranks: int | None = None


class EngineFaultStatus(_Wire):
    """How a model's engine last failed."""

    kind: str  # crash | killed | exited | device_error | engine_error | hang
    signal: str | None = None  # e.g. SIGSEGV, for a crash or a kill
    at: float  # unix time


class ModelStatus(_Wire):
    """One loaded model; also the answer to a load."""

    id: str
    state: ModelState
    spec: ModelSpec
    devices: list[str]
    memory_mb: int
    context_length: int | None  # None while loading
    in_flight: int  # sequences in the batch
    queued: int  # admitted, waiting for a place in the batch
    last_used: float  # unix time
    # The engine process (a tensor-parallel model: its ranks' processes, rank 0 first).
    engine_pid: int | list[int] | None = None
    restarts: int = 0  # engines rebuilt after a fault
    last_fault: EngineFaultStatus | None = None
    fallback: str | None = None  # why a safe setting was chosen, e.g. after a canary crash
    # Sampling for the fields a request leaves out: the spec's over the model file's
    # (None: neither sets any, or an older neuron; the engine's defaults apply).
    sampling_defaults: SamplingDefaults | None = None
    # Chain hashes (``protocol.prefix_digest``) of the prompts this model admitted
    # lately, least recent first: where a conversation's prefix is likely cached, for
    # the gateway's routing. Bounded; empty from a neuron older than contract 1.1.
    prefix_digest: list[str] = Field(default_factory=list)
    # Host RAM this model's KV host tier may use, granted out of the node's budget.
    kv_host_cache_mb: int | None = None
    # 1.4: MB on each device of ``devices`` (ranks on one device summed); empty from an
    # older neuron, whose models are on one device with all of ``memory_mb``.
    device_memory_mb: dict[str, int] = Field(default_factory=dict)
    # The attention kernel a GGUF model runs, its spec's "auto" resolved on this node's
    # llama.cpp build: "plain" decodes faster on a CPU, "flash" answers a cached prefix
    # bit for bit as a cold one. None for a dense model, while loading, or from an older
    # neuron.
    attention: Literal["flash", "plain"] | None = None

    @field_validator("spec", mode="before")
    @classmethod
    def _known_spec_keys(cls, value: Any) -> Any:
        # ModelSpec refuses unknown keys (a models.toml typo must not pass), but a newer
        # minor neuron may echo a spec with more of them: read what this side knows.
        if isinstance(value, dict):
            value = _known(ModelSpec, value)
            if isinstance(value.get("sampling"), dict):
                value["sampling"] = _known(SamplingDefaults, value["sampling"])
        return value

    @field_validator("sampling_defaults", mode="before")
    @classmethod
    def _known_sampling_keys(cls, value: Any) -> Any:
        return _known(SamplingDefaults, value) if isinstance(value, dict) else value


def _known(model: type[BaseModel], value: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``value`` that ``model`` has: what this side of the contract reads."""
    return {k: v for k, v in value.items() if k in model.model_fields}


class NodeStatus(_Wire):
    contract: str = CONTRACT_VERSION
    node: str
    devices: list[DeviceStatus]
    models: list[ModelStatus]


class ModelList(_Wire):
    models: list[ModelStatus]


# --- POST /models/load (body: cortex.spec.ModelSpec; answer: LoadAnswer) ---------------

# What a load call did: started the load and saw it through, joined a load of the same
# spec already under way (another gateway's: both wait on the one load), or found the
# model already there. A neuron older than 1.2 sends none: "loaded".
LoadOutcome = Literal["loaded", "joined", "present"]


class LoadAnswer(ModelStatus):
    """The loaded model (``ModelStatus``, so older readers parse it as before), and how."""

    outcome: LoadOutcome = "loaded"


class MemoryRefusal(_Wire):
    """The error object of a 507 ``insufficient_memory`` from ``/models/load``: the node
    checked the load against what is left now, loads under way counted, and refused it.
    The numbers may be absent from a neuron older than 1.2."""

    message: str = ""
    code: str | None = None
    need_mb: int | None = None  # the load's estimate
    free_mb: int | None = None  # what the device had left for it
    device: str | None = None


# --- POST /models/estimate (body: ModelSpec) ---------------------------------------------


class EstimateDetail(_Wire):
    """How the estimate adds up (``neuron.files.estimate.MemoryEstimate``)."""

    format: Literal["gguf", "safetensors"]
    weights_mb: int
    kv_cache_mb: int
    overhead_mb: int
    total_mb: int  # the spec's memory_mb when overridden, else the sum of the three parts
    embedding_mb: int
    n_layer: int
    n_head_kv: int
    kv_heads_total: int
    key_length: int
    value_length: int
    kv_tokens: int
    kv_dtype_bytes: float  # per element: 1.0625 for a q8_0 cache
    n_vocab: int
    overridden: bool


class EstimateAnswer(_Wire):
    id: str
    memory_mb: int
    estimate: EstimateDetail
    # 1.4: MB on each device a load takes, the main device's first (one entry for a
    # single-device model; per rank for tensor_parallel; per GPU for a GGUF split).
    shares_mb: list[int] = Field(default_factory=list)


# --- POST /models/unload -----------------------------------------------------------------


class UnloadRequest(_Wire):
    id: str


class UnloadAnswer(_Wire):
    id: str
    unloaded: Literal[True] = True


# --- POST /tokenize (answer) -------------------------------------------------------------


class TokenCount(_Wire):
    count: int


# --- POST /debug/fault (testing only, --enable-fault-injection) ---------------------------


class FaultRequest(_Wire):
    model: str
    kind: str  # segfault | abort | kill | hang | device_error


class FaultAnswer(_Wire):
    model: str
    kind: str
    armed: Literal[True] = True


# --- per generation: the report (protocol.sse.REPORT_HEADER) -------------------------------


class GenerationReport(_Wire):
    """What a neuron measured for one generation: a header on a plain answer, an SSE
    comment before ``[DONE]`` on a stream."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_ms: float | None  # None when no token came


# --- GET /requests/{request_id} ----------------------------------------------------------


class FinishedRequest(GenerationReport):
    """A generation that has ended, by the request id the gateway sent: kept a while so
    that a stream cut by its client (whose report never reached the gateway) is counted
    for what it generated. 404 while it runs, or once forgotten."""

    request_id: str
    model: str
    finish: str  # stop | length | tool_calls | cancelled | error
