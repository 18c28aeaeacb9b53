"""One rank's share of a dense model: loaded from safetensors, run over its own KV cache.

The same class serves a single-device engine (rank 0 of 1), the leader of a
tensor-parallel group (rank 0 of N, in the neuron's device thread) and every TP
worker process: each rank runs ``forward`` on the same tokens, collectives inside
the sharded layers tie them together, and every rank returns the last position's
logits (only the leader samples from them).

Loading never runs checkpoint code: ``use_safetensors=True``, no ``trust_remote_code``,
local files only.
"""

from __future__ import annotations

import gc
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cortex.neuron.engines.dense.sharding import ModelShape, ShardingKind, rank_slices

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadParams:
    """What a rank needs to load its share; plain data, sent to worker processes."""

    path: str
    device: str  # "cpu" or "cuda:N"
    dtype: str  # a key of _DTYPES
    threads: int
    sharding: ShardingKind
    rank: int = 0
    world: int = 1
    devices: tuple[str, ...] = ()  # every rank's device, rank order (empty: the old rule)


def pick_dtype(config_dtype: Any, device: str) -> str:
    """The checkpoint's own dtype, except half precision on a CPU (slow there): float32."""
    name = str(config_dtype or "float32").removeprefix("torch.")
    if name not in _DTYPES:
        name = "float32"
    if device == "cpu" and name == "float16":
        return "float32"
    return name


def can_trim(config: Any) -> bool:
    """Whether the KV cache can be cut back to a shared prefix: plain full attention only."""
    text = getattr(config, "text_config", None) or config
    if getattr(text, "sliding_window", None):
        return False
    layer_types = getattr(text, "layer_types", None) or []
    return all(kind == "full_attention" for kind in layer_types)


class RankModel:
    """A loaded model (or shard) and the KV cache of the one sequence it serves."""

    def __init__(self, params: LoadParams) -> None:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no per-tensor bars in the neuron's log
        self._threads = max(1, params.threads)
        torch.set_num_threads(self._threads)
        kwargs: dict[str, Any] = {
            "dtype": _DTYPES[params.dtype],
            "use_safetensors": True,
            "local_files_only": True,
            "trust_remote_code": False,
        }
        if params.sharding == "transformers":
            from transformers.distributed import DistributedConfig

            kwargs["distributed_config"] = DistributedConfig(tp_size=params.world)
        model = AutoModelForCausalLM.from_pretrained(params.path, **kwargs)
        if params.sharding == "megatron":
            shard_megatron(model, ModelShape.of(model.config), params.rank, params.world)
            gc.collect()  # the full-size weights the shard was cut from
        if params.sharding != "transformers":
            model = model.to(params.device)
        model.eval()
        self.model = model
        self.device = torch.device(params.device)
        self._sharding = params.sharding
        self.can_trim = can_trim(model.config)
        self._cache: Any = None
        # transformers 5.x renames forward's ``past_key_values`` to ``cache`` (5.24 warns)
        names = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in names else "past_key_values"

    @property
    def cached_tokens(self) -> int:
        return 0 if self._cache is None else int(self._cache.get_seq_length())

    def forward(self, tokens: list[int], start: int) -> torch.Tensor:
        """Run ``tokens`` at positions ``start..``; the logits (float32) after the last one.

        The cache must hold at least ``start`` tokens: it is cut back to ``start``
        first (a shared prefix kept), or dropped when ``start`` is 0.
        """
        from transformers import DynamicCache

        held = self.cached_tokens
        if start == 0 or self._cache is None:
            self._cache = DynamicCache(config=self.model.config)
            held = 0
        if start > held or (start < held and not self.can_trim):
            raise RuntimeError(f"KV cache holds {held} tokens, asked to continue at {start}")
        if start < held:
            self._cache.crop(start - held)  # a negative count: tokens to drop from the end
        if torch.get_num_threads() != self._threads:  # process-wide; engines share a process
            torch.set_num_threads(self._threads)
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        cache = {self._cache_kwarg: self._cache}  # filled in place
        with torch.inference_mode():
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache)
        return out.logits[0, -1].float()

    def clear(self) -> None:
        self._cache = None

    def close(self) -> None:
        self._cache = None
        self.model = None
        if self._sharding == "transformers":
            _forget_device_meshes()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _forget_device_meshes() -> None:
    """Let go of the process groups transformers' TP left in torch's caches.

    Its DTensors' sharding specs stay cached (per thread) after the model is gone,
    they hold the device meshes, and each mesh holds its process groups, which hold
    the TCP store: its port and gloo's would stay open after the group is destroyed.
    """
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor

    propagator = getattr(DTensor, "_op_dispatcher", None)
    propagator = getattr(propagator, "sharding_propagator", None)
    cached = getattr(propagator, "propagate_op_sharding", None)
    if hasattr(cached, "cache_clear"):
        cached.cache_clear()
    for obj in gc.get_objects():
        if isinstance(obj, DeviceMesh) and isinstance(getattr(obj, "_pg_registry", None), dict):
            obj._pg_registry.clear()


class RowParallelLinear(nn.Module):
    """The input columns ``cols`` of a linear layer; partial outputs summed over ranks."""

    def __init__(self, linear: nn.Linear, cols: range) -> None:
        super().__init__()
        self.in_features = len(cols)
        self.out_features = linear.out_features
        weight = linear.weight[:, cols.start : cols.stop].detach().clone().contiguous()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = linear.bias  # added once, after the sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x, self.weight)
        torch.distributed.all_reduce(out)
        return out if self.bias is None else out + self.bias


def _column(linear: nn.Linear, rows: range) -> nn.Linear:
    out = nn.Linear(linear.in_features, len(rows), bias=linear.bias is not None)
    out = out.to(dtype=linear.weight.dtype, device=linear.weight.device)
    with torch.no_grad():
        out.weight.copy_(linear.weight[rows.start : rows.stop])
        if linear.bias is not None:
            out.bias.copy_(linear.bias[rows.start : rows.stop])
    out.requires_grad_(False)
    return out


def shard_megatron(model: nn.Module, shape: ModelShape, rank: int, world: int) -> None:
    """Cut a fully loaded model down to this rank's share, in place (see ``sharding.py``).

    Every rank must then run forward on the same inputs: each row-parallel layer
    ends in an ``all_reduce`` over the default process group.
    """
    slices = rank_slices(shape, rank, world)
    base = getattr(model, "model", model)
    for layer in base.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.q_proj = _column(attn.q_proj, slices.q_rows)
        attn.k_proj = _column(attn.k_proj, slices.kv_rows)
        attn.v_proj = _column(attn.v_proj, slices.kv_rows)
        attn.o_proj = RowParallelLinear(attn.o_proj, slices.q_rows)
        mlp.gate_proj = _column(mlp.gate_proj, slices.mlp_rows)
        mlp.up_proj = _column(mlp.up_proj, slices.mlp_rows)
        mlp.down_proj = RowParallelLinear(mlp.down_proj, slices.mlp_rows)
