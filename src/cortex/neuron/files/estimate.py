"""How much memory a model profile needs, worked out from file headers before any load.

    total = weights + KV cache + overhead          (each rounded up to whole MiB)
    KV    = kv_tokens * kv_heads_total * (key_length + value_length) * kv_dtype_bytes

``kv_dtype_bytes`` is per element: a GGUF model's follows its spec's ``kv_cache_type``
(f16 2; q8_0 and q4_0 are ggml blocks of 32 elements, 34 and 18 bytes: 1.0625 and
0.5625), a safetensors model's its torch dtype.

``kv_heads_total`` is the sum of KV heads over the layers (``n_layer * n_head_kv``
when every layer has the same count). A spec's ``memory_mb`` overrides the total;
the parts are still worked out, so an operator can compare the two.

The GGUF estimate mirrors what ``engines/llamacpp/engine.py`` asks llama.cpp for; it
over-reports for sliding-window models (their SWA layers keep a shorter cache)
and on GPUs (llama.cpp keeps the token embeddings in host memory).

``shares_mb`` is what each device of a load takes, the main device's first (one
entry on one device; see ``device_shares`` for tensor parallelism and GGUF splits).

``embedding_mb`` is what the embedding context (``engines/llamacpp/embed.py``) adds
when a model first serves ``/v1/embeddings``. It is not in ``total_mb``: most models
never embed, so the manager counts it into the model's memory only when it is created.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from cortex.errors import InvalidRequest
from cortex.neuron.engines.llamacpp.attention import uses_flash_attention
from cortex.neuron.files.headers import GGUFHeader, Strings, read_gguf, safetensors_bytes
from cortex.spec import ModelSpec

MIB = 2**20
# llama.cpp's micro-batch in our engine: its compute buffer is sized for this many tokens.
LLAMACPP_UBATCH_TOKENS = 512
# The embedding context's micro-batch: small, because every one of its tokens is an output
# (llama.cpp computes logits for each, in the compute buffer and again in the output buffer).
LLAMACPP_EMBED_UBATCH_TOKENS = 128
_LLAMACPP_CTX_PAD = 256  # llama.cpp rounds each sequence's context up to a multiple of this
# Bytes per element of each kv_cache_type: ggml's q8_0 and q4_0 blocks hold 32 elements in
# an f16 scale and 32 int8 (34 bytes) or 16 bytes of 4-bit pairs (18; ggml-common.h).
KV_CACHE_BYTES = {"f16": Fraction(2), "q8_0": Fraction(34, 32), "q4_0": Fraction(18, 32)}
_KV_F16 = KV_CACHE_BYTES["f16"]  # the embedding context's, whatever the spec's (embed.py)
_LOGIT_BYTES = 4  # logits are f32
# Backend contexts, graph metadata and the in-memory vocabulary: ~18 MiB for
# SmolLM2-135M's 49k-token vocabulary, rounded up for bigger ones.
# Plus the engine process every model runs in: Python, cortex and llama.cpp imported,
# no model loaded, measured 61 MiB RSS (bench/engine_process_bench.py line 4).
ENGINE_PROCESS_OVERHEAD = 64 * MIB
_BASE_OVERHEAD = 32 * MIB + ENGINE_PROCESS_OVERHEAD
_EMBED_CONTEXT_OVERHEAD = 8 * MIB  # a second context's graph and scheduler state
_TORCH_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
DENSE_SEQUENCES = 1  # the dense engine serialises its requests

Format = Literal["gguf", "safetensors"]


@dataclass(frozen=True)
class MemoryEstimate:
    format: Format
    weights_mb: int
    kv_cache_mb: int
    overhead_mb: int
    total_mb: int  # the override when ``overridden``, else the sum of the three parts
    embedding_mb: int  # added when an embedding context is created; 0 when overridden
    n_layer: int
    n_head_kv: int  # per layer (the largest, when layers differ)
    kv_heads_total: int  # summed over layers
    key_length: int
    value_length: int
    kv_tokens: int  # KV cells allocated: per-sequence context * sequences
    kv_dtype_bytes: float  # per element: 2 for f16, 1.0625 for q8_0, 0.5625 for q4_0
    n_vocab: int
    overridden: bool
    shares_mb: tuple[int, ...] = ()  # MB per device, main first; () means (total_mb,)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Shape:
    """What the KV cache and the overhead depend on, whatever the file format."""

    n_layer: int
    n_head: int  # query heads (the largest, when layers differ)
    kv_heads: tuple[int, ...]  # per layer
    key_length: int
    value_length: int
    n_embd: int
    n_vocab: int


def estimate_memory(path: Path, spec: ModelSpec) -> MemoryEstimate:
    """The estimate for ``spec`` served from ``path``: a GGUF file, or safetensors."""
    if path.suffix == ".gguf":
        return _estimate_gguf(path, spec)
    if path.suffix == ".safetensors" or path.is_dir():
        return _estimate_safetensors(path, spec)
    raise InvalidRequest(
        f"cannot estimate memory for '{path.name}': expected a GGUF file or safetensors"
    )


# -- GGUF ------------------------------------------------------------------------------


def llamacpp_context_per_sequence(context_length: int, max_batch: int, train_ctx: int) -> int:
    """The KV cells llama.cpp gives each sequence for our engine's context parameters.

    The engine caps the context at the training context, asks for ``context *
    max_batch`` cells in ``max_batch`` streams; llama.cpp pads the total and each
    stream's share up to a multiple of 256 (``llama_context`` constructor).
    """
    context = min(context_length, train_ctx) if train_ctx > 0 else context_length
    total = _pad(context * max_batch, _LLAMACPP_CTX_PAD)
    return _pad(total // max_batch, _LLAMACPP_CTX_PAD)


def _estimate_gguf(path: Path, spec: ModelSpec) -> MemoryEstimate:
    header = read_gguf(path)
    shape = _gguf_shape(header, path)
    arch = header.fields["general.architecture"]
    train_ctx = _int(header.fields.get(f"{arch}.context_length", 0))
    per_sequence = llamacpp_context_per_sequence(spec.context_length, spec.max_batch, train_ctx)
    # The compute buffer is reserved for the worst micro-batch, one whose every token
    # asks for logits (n_ubatch x n_vocab f32: 96 MiB of SmolLM2's 98 MiB buffer), plus
    # activations (~4 x n_embd floats a token measured; 8 kept for headroom). The
    # output buffer holds one row of logits per sequence.
    logits = shape.n_vocab * _LOGIT_BYTES * LLAMACPP_UBATCH_TOKENS
    # Without flash attention a micro-batch's attention scores are materialised: f32,
    # one row of the sequence's cells per token and head, plus the f32 mask (one more
    # "head"). The buffer is reused across the graph, so it costs only what it exceeds
    # the logits by. Measured for SmolLM2-135M: 166 MiB at 8192 cells against 98 with
    # flash attention; this says 169.
    scores = 0
    if not uses_flash_attention(spec):
        scores = LLAMACPP_UBATCH_TOKENS * per_sequence * (shape.n_head + 1) * _LOGIT_BYTES
    overhead = (
        _BASE_OVERHEAD
        + max(logits, scores)
        + shape.n_vocab * _LOGIT_BYTES * spec.max_batch
        + LLAMACPP_UBATCH_TOKENS * shape.n_embd * 4 * 8
    )
    # The embedding context: one sequence's KV, a micro-batch whose every token has its
    # logits (compute buffer and output buffer) and activations, and the context's own
    # graph and scheduler. Measured for SmolLM2-135M at 4096 tokens: 143 MiB more
    # resident after a full-length input; this says 149.
    per_output = shape.n_vocab * _LOGIT_BYTES * 2 + shape.n_embd * 4 * 8
    embedding = (
        _kv_bytes(shape, per_sequence, _KV_F16)
        + LLAMACPP_EMBED_UBATCH_TOKENS * per_output
        + _EMBED_CONTEXT_OVERHEAD
    )
    estimate = _assemble(
        "gguf",
        spec,
        header.tensor_bytes,
        shape,
        per_sequence,
        KV_CACHE_BYTES[spec.kv_cache_type],
        overhead,
        embedding,
    )
    return replace(estimate, shares_mb=device_shares(estimate, spec))


def _gguf_shape(header: GGUFHeader, path: Path) -> _Shape:
    fields = header.fields
    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise InvalidRequest(f"{path.name} has no general.architecture")

    def get(key: str, default: Any = None) -> Any:
        value = fields.get(f"{arch}.{key}", default)
        if value is None:
            raise InvalidRequest(f"{path.name} has no {arch}.{key}: cannot size its KV cache")
        return value

    n_layer = _int(get("block_count"))
    n_embd = _int(get("embedding_length"))
    n_head = _per_layer(get("attention.head_count"), n_layer)
    # head_count_kv: absent means no grouped-query attention; an array means it varies
    # by layer (0 on the recurrent layers of hybrid models).
    kv_heads = _per_layer(get("attention.head_count_kv", get("attention.head_count")), n_layer)
    head_dim = n_embd // max(1, max(n_head))
    tokens = fields.get("tokenizer.ggml.tokens")
    vocab = fields.get(f"{arch}.vocab_size", tokens.count if isinstance(tokens, Strings) else 0)
    return _Shape(
        n_layer=n_layer,
        n_head=max(n_head, default=0),
        kv_heads=kv_heads,
        key_length=_int(get("attention.key_length", head_dim)),
        value_length=_int(get("attention.value_length", head_dim)),
        n_embd=n_embd,
        n_vocab=_int(vocab),
    )


# -- safetensors -------------------------------------------------------------------------


def _estimate_safetensors(path: Path, spec: ModelSpec) -> MemoryEstimate:
    directory = path if path.is_dir() else path.parent
    files = [path] if path.is_file() else _safetensors_files(directory)
    config = _read_config(directory)
    shape = _config_shape(config, directory)
    dtype = config.get("torch_dtype") or config.get("dtype")
    # No dtype written: transformers' historical default is float32, the safe side.
    kv_bytes = _TORCH_DTYPE_BYTES.get(str(dtype), 4) if dtype else 4
    # (a spec's kv_cache_type is llama.cpp's; the dense engine refuses a quantised one)
    # The dense engine (engines/dense/engine.py) runs one sequence at a time: one full context
    # of KV and one row of f32 logits, whatever max_batch says.
    overhead = _BASE_OVERHEAD + shape.n_vocab * _LOGIT_BYTES
    weights = safetensors_bytes(files)
    estimate = _assemble(
        "safetensors",
        spec,
        weights,
        shape,
        spec.context_length,
        kv_bytes,
        overhead,
        0,
        sequences=DENSE_SEQUENCES,
    )
    # Both sharders keep the embeddings and the LM head whole on every rank
    # (engines/dense/sharding.py); an untied head is a second copy.
    heads = 1 if config.get("tie_word_embeddings", False) else 2
    replicated = min(weights, shape.n_vocab * shape.n_embd * kv_bytes * heads)
    return replace(estimate, shares_mb=device_shares(estimate, spec, _ceil_mb(replicated)))


def _safetensors_files(directory: Path) -> list[Path]:
    # The index names the shards when there is one: some repositories also ship a
    # consolidated copy of the same weights beside them, which must not count twice.
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidRequest(f"{index.name} in {directory} is unreadable: {exc}") from None
        return [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    files = [single] if single.is_file() else sorted(directory.glob("*.safetensors"))
    if not files:
        raise InvalidRequest(f"no safetensors files in {directory}")
    return files


def _read_config(directory: Path) -> dict[str, Any]:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"config.json in {directory} is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidRequest(f"config.json in {directory} is not a JSON object")
    # Multimodal checkpoints keep the language model's shape under text_config.
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        return {**config, **config["text_config"]}
    return config


def _config_shape(config: dict[str, Any], directory: Path) -> _Shape:
    try:
        n_layer = int(config["num_hidden_layers"])
        n_head = int(config["num_attention_heads"])
        n_embd = int(config["hidden_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"config.json in {directory} lacks {exc}") from None
    head_dim = int(config.get("head_dim") or n_embd // max(1, n_head))
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    return _Shape(
        n_layer=n_layer,
        n_head=n_head,
        kv_heads=(n_head_kv,) * n_layer,
        key_length=head_dim,
        value_length=head_dim,
        n_embd=n_embd,
        n_vocab=int(config.get("vocab_size") or 0),
    )


# -- several devices ----------------------------------------------------------------------


def device_shares(
    estimate: MemoryEstimate, spec: ModelSpec, replicated_mb: int = 0
) -> tuple[int, ...]:
    """MB on each device a load of ``spec`` takes, the main device's (rank 0's) first.

    ``tensor_parallel = N`` (dense): each rank holds the replicated weights
    (``replicated_mb``: embeddings and LM head) and 1/N of the rest, the KV of its share
    of the KV heads (whole groups, so the widest rank's ``ceil(heads / N)``), and a whole
    overhead (every rank is a process with its own runtime and buffers).

    A GGUF ``split`` over N GPUs, modelled on llama.cpp's ``llama_model::load_tensors``
    (read, not measured; BENCHMARKS.md has the run that will check it): the repeating
    layers and the output layer (n_layer + 1 units) go to the GPUs in order by
    ``tensor_split`` (equal here), each layer's KV cache on its layer's GPU, and every
    GPU reserves a compute buffer. "layer": a GPU holds its layers' weights and KV.
    "row": each weight matrix is split by rows over all N GPUs, so a GPU holds 1/N of
    the weights; older llama.cpp kept the whole KV on ``main_gpu`` in this mode, so the
    main GPU is charged all of it and the others their layers' share: safe under either.
    Token embeddings stay in host memory; they are counted on the GPUs all the same.

    An operator's ``memory_mb`` is the whole model: split evenly.
    """
    width = spec.width
    if width == 1:
        return (estimate.total_mb,)
    if estimate.overridden:
        return (-(-estimate.total_mb // width),) * width
    if spec.tensor_parallel > 1:
        sharded = max(0, estimate.weights_mb - replicated_mb)
        heads = max(1, estimate.n_head_kv)
        kv = -(-estimate.kv_cache_mb * -(-heads // width) // heads)
        rank = replicated_mb + -(-sharded // width) + kv + estimate.overhead_mb
        return (rank,) * width
    layers = max(_layers_per_gpu(estimate.n_layer, width))
    units = max(1, estimate.n_layer)
    kv_layers = -(-estimate.kv_cache_mb * layers // units)
    if spec.split == "layer":
        weights = -(-estimate.weights_mb * layers // units)
        return (weights + kv_layers + estimate.overhead_mb,) * width
    weights = -(-estimate.weights_mb // width)
    main = weights + estimate.kv_cache_mb + estimate.overhead_mb
    return (main, *(weights + kv_layers + estimate.overhead_mb,) * (width - 1))


def _layers_per_gpu(n_layer: int, gpus: int) -> list[int]:
    """Layers (the output layer counted as one more) each GPU gets from llama.cpp's rule:
    unit ``il`` goes to the first GPU whose cumulative split exceeds ``il / (n_layer+1)``."""
    units = n_layer + 1
    counts = [0] * gpus
    for il in range(units):
        gpu = next(g for g in range(gpus) if (g + 1) / gpus > il / units)
        counts[gpu] += 1
    return counts


# -- shared ------------------------------------------------------------------------------


def _assemble(
    fmt: Format,
    spec: ModelSpec,
    weight_bytes: int,
    shape: _Shape,
    per_sequence: int,
    kv_dtype_bytes: Fraction | int,  # per element
    overhead_bytes: int,
    embedding_bytes: int,
    sequences: int | None = None,
) -> MemoryEstimate:
    kv_tokens = per_sequence * (sequences or spec.max_batch)
    heads = sum(shape.kv_heads)
    kv_bytes = _kv_bytes(shape, kv_tokens, kv_dtype_bytes)
    # Each part rounds up, and the total is their sum: an estimate never under-reports.
    weights_mb, kv_mb, overhead_mb = (_ceil_mb(b) for b in (weight_bytes, kv_bytes, overhead_bytes))
    return MemoryEstimate(
        format=fmt,
        weights_mb=weights_mb,
        kv_cache_mb=kv_mb,
        overhead_mb=overhead_mb,
        total_mb=spec.memory_mb or weights_mb + kv_mb + overhead_mb,
        # an operator's override stands for everything the model takes
        embedding_mb=0 if spec.memory_mb else _ceil_mb(embedding_bytes),
        n_layer=shape.n_layer,
        n_head_kv=max(shape.kv_heads, default=0),
        kv_heads_total=heads,
        key_length=shape.key_length,
        value_length=shape.value_length,
        kv_tokens=kv_tokens,
        kv_dtype_bytes=float(kv_dtype_bytes),
        n_vocab=shape.n_vocab,
        overridden=spec.memory_mb is not None,
    )


def _kv_bytes(shape: _Shape, tokens: int, dtype_bytes: Fraction | int) -> int:
    elements = tokens * sum(shape.kv_heads) * (shape.key_length + shape.value_length)
    return math.ceil(elements * dtype_bytes)


def _per_layer(value: Any, n_layer: int) -> tuple[int, ...]:
    if isinstance(value, tuple):
        if len(value) != n_layer:
            raise InvalidRequest(f"per-layer head counts for {len(value)} of {n_layer} layers")
        return tuple(_int(v) for v in value)
    return (_int(value),) * n_layer


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"expected an integer in the model's metadata, got {value!r}")
    return value


def _pad(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _ceil_mb(size: int) -> int:
    return -(-size // MIB)
