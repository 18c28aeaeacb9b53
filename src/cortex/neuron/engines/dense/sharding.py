"""How a dense checkpoint is split over tensor-parallel ranks, decided before anything loads.

Two ways, picked from ``config.json`` alone (``plan_sharding``), so an impossible split
is a clear ``InvalidRequest`` at load time, never a crash in the first forward:

- ``transformers``: the model's own TP plan (``DistributedConfig(tp_size=N)``) when its
  config declares one and the query heads, KV heads and MLP width all divide by N.
  transformers checks none of this itself: with 9 heads over 2 ranks it loads, then
  fails in the first forward.
- ``megatron``: for the Llama-shaped models in ``MEGATRON_MODEL_TYPES`` whose heads do
  not divide, ``shard_megatron`` below: q/k/v/gate/up column-parallel, o/down
  row-parallel with one ``all_reduce`` each, KV groups kept whole (a rank gets its KV
  heads and exactly the query heads that read them), shares as even as whole groups
  allow. SmolLM2-135M (9 query heads, 3 KV heads) over 2 ranks: 6+3 query heads.
  The cutting itself is ``rank_model.shard_megatron``; this module imports no torch.

Both keep embeddings, norms and the LM head whole on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from cortex.errors import InvalidRequest

ShardingKind = Literal["single", "transformers", "megatron"]

# Decoder layers of these model types have self_attn.{q,k,v,o}_proj and
# mlp.{gate,up,down}_proj linears, and reshape heads with -1 (so a rank may hold fewer).
MEGATRON_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "olmo2", "granite"})


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    has_tp_plan: bool  # the config class declares a base_model_tp_plan

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        """From a transformers config object (or anything with the same attributes)."""
        text = getattr(config, "text_config", None) or config
        n_heads = int(text.num_attention_heads)
        hidden = int(text.hidden_size)
        return cls(
            model_type=str(getattr(text, "model_type", "")),
            n_heads=n_heads,
            n_kv_heads=int(getattr(text, "num_key_value_heads", None) or n_heads),
            head_dim=int(getattr(text, "head_dim", None) or hidden // n_heads),
            intermediate=int(getattr(text, "intermediate_size", 0) or 0),
            has_tp_plan=bool(getattr(text, "base_model_tp_plan", None)),
        )


def plan_sharding(shape: ModelShape, world: int) -> ShardingKind:
    """Which sharder serves ``world`` ranks, or the reason none can."""
    if world == 1:
        return "single"
    divides = (
        shape.n_heads % world == 0
        and shape.n_kv_heads % world == 0
        and shape.intermediate % world == 0
    )
    if divides and shape.has_tp_plan:
        return "transformers"
    if shape.model_type not in MEGATRON_MODEL_TYPES:
        raise InvalidRequest(
            f"tensor_parallel={world} cannot split this '{shape.model_type}' model: its heads "
            f"({shape.n_heads} query, {shape.n_kv_heads} KV) or MLP width ({shape.intermediate}) "
            f"do not divide by {world}, and cortex's own sharder knows only "
            f"{', '.join(sorted(MEGATRON_MODEL_TYPES))} layers"
        )
    if world > shape.n_kv_heads:
        raise InvalidRequest(
            f"tensor_parallel={world} is more ranks than the model's {shape.n_kv_heads} KV heads: "
            "every rank needs at least one whole KV group"
        )
    if world > shape.intermediate:
        raise InvalidRequest(f"tensor_parallel={world} is wider than the MLP")
    return "megatron"


def split_evenly(total: int, world: int) -> list[range]:
    """``range(total)`` cut into ``world`` contiguous parts, sizes differing by at most one."""
    base, extra = divmod(total, world)
    parts, start = [], 0
    for rank in range(world):
        size = base + (1 if rank < extra else 0)
        parts.append(range(start, start + size))
        start += size
    return parts


@dataclass(frozen=True)
class RankSlices:
    """The rows (output features) of q, k/v and gate/up that one rank keeps."""

    q_rows: range
    kv_rows: range
    mlp_rows: range


def rank_slices(shape: ModelShape, rank: int, world: int) -> RankSlices:
    groups = split_evenly(shape.n_kv_heads, world)[rank]
    per_group = shape.n_heads // shape.n_kv_heads
    d = shape.head_dim
    return RankSlices(
        q_rows=range(groups.start * per_group * d, groups.stop * per_group * d),
        kv_rows=range(groups.start * d, groups.stop * d),
        mlp_rows=split_evenly(shape.intermediate, world)[rank],
    )
