"""Whether a GGUF load runs llama.cpp's flash attention: one rule, for the engine that
creates the context and for the memory estimate that sizes it.

Measured on this project's CPUs (bench/attention_bench.py, BENCHMARKS.md): llama.cpp's
CPU flash-attention kernel decodes one token about 2x slower than the plain path once the
context holds 850-2,600 tokens, for 12-17 % faster prefill. Coding agents live at those
lengths, so "auto" is off in a build that cannot offload to a GPU and on where it can
(llama.cpp's own default, and the fast path on a GPU). The rule follows the build, not
the device a load lands on, because the estimate is made before placement and must count
what the engine will do: a GGUF on a node with a usable GPU goes to that GPU anyway
(``runtime/manager.py``). The price of the plain path: its attention scores take
memory (counted in the estimate), and its batches of 4+ tokens of one sequence round
differently from one at a time, so a cached prefix can answer a near tie otherwise than
a cold prefill; ``flash_attention = true`` buys bit-stable answers back. A quantised KV
cache needs flash attention (llama.cpp refuses it without).
"""

from __future__ import annotations

import functools

from cortex.spec import ModelSpec


def uses_flash_attention(spec: ModelSpec) -> bool:
    """The choice for ``spec`` in this process's llama.cpp build."""
    if spec.kv_cache_type != "f16":
        return True
    if spec.flash_attention != "auto":
        return spec.flash_attention
    return build_offloads()


@functools.cache
def build_offloads() -> bool:
    """Whether this llama.cpp build can put layers on a GPU (a CPU-only wheel, or a CUDA
    build on a machine with no GPU, cannot). Imported here, lazily: the neuron imports
    llama.cpp only when it sizes or loads a GGUF."""
    try:
        import llama_cpp
    except ImportError:  # no llama.cpp: nothing runs a GGUF here at all
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())
