"""Whether a GGUF load runs llama.cpp's flash attention: one rule, for the engine that
creates the context and for the memory estimate that sizes it.

Measured on this project's Xeon CPU (bench/attention_bench.py, BENCHMARKS.md): llama.cpp's
CPU flash-attention kernel decodes one token about 2x slower than the plain path once the
context holds 850-2,600 tokens, for 12-17 % faster prefill. "auto" still means on (as
llama.cpp's own default) until the suite's greedy-equality tests are settled under the
plain path, whose batches of 4+ tokens round differently; ``flash_attention = false``
takes the faster decode on a CPU, with the plain path's attention scores counted in the
estimate. A quantised KV cache needs flash attention (llama.cpp refuses it without).
"""

from __future__ import annotations

from cortex.spec import ModelSpec


def uses_flash_attention(spec: ModelSpec) -> bool:
    """The choice for ``spec``."""
    if spec.kv_cache_type != "f16":
        return True
    if spec.flash_attention != "auto":
        return spec.flash_attention
    return True
