"""Neuron settings: command-line flags over an optional ``neuron.toml``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cortex.spec import ModelSpec


class NeuronSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: str = "127.0.0.1:13131"
    name: str = Field(default_factory=lambda: __import__("socket").gethostname())
    memory_budget_mb: int | None = Field(default=None, ge=1)
    token: str | None = Field(default=None, repr=False)
    enable_fault_injection: bool = False
    # A decode step running longer than this is a hang: the model is reloaded.
    step_deadline_s: float = Field(default=60.0, gt=0)
    cpu_tp_ranks: int = Field(default=1, ge=1)
    load: list[ModelSpec] = Field(default_factory=list)
    max_body_mb: int = Field(default=32, ge=1)  # request bodies past this are a 413
    header_timeout_s: float = Field(default=30, gt=0)  # a request's headers, or a 408
    # Where the KV cache's disk tier keeps prefixes (a folder per model and KV setting);
    # none: no disk tier.
    kv_cache_dir: Path | None = None
    # Host RAM all models' KV host tiers may use together, shared out first come, first
    # served, each model at most its spec's kv_host_cache_mb; none: a tenth of the RAM
    # available when the neuron starts.
    kv_host_cache_mb: int | None = Field(default=None, ge=0)
