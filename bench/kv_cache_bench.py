"""What a quantised KV cache (a spec's ``kv_cache_type``) saves and costs.

The bundled SmolLM2-135M GGUF through ``LlamaCppEngine`` in-process, 2 threads, greedy,
one sequence (context 2048), for each of f16, q8_0 and q4_0. The types alternate run by
run, so a drift in the machine's speed hits all three. Speeds are the best of the runs:
on a shared machine another process only ever slows a run down (``--median`` for medians).

Lines, per type, and each as a ratio to f16:

1. KV MiB: what llama.cpp reports allocating (its log, ``llama_kv_cache: size =``),
   beside the memory estimate's ``kv_cache_mb``. Target for q8_0: <= 0.55x f16.
2. Decode tok/s after a short prompt (~20 tokens): first token to last, 256 tokens.
3. Decode tok/s after a long prompt (~1500 tokens), 128 tokens: attention reads the
   whole cache at every step, so this is where the cache's type shows.

Usage: ``.venv/bin/python bench/kv_cache_bench.py [--runs N] [--quick] [--json OUT]``
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import statistics
import sys
from pathlib import Path

import llama_cpp as C
from _greedy_run import run_greedy

from cortex.neuron.engines.llamacpp.engine import LlamaCppEngine
from cortex.neuron.files.estimate import estimate_memory
from cortex.neuron.files.sources import parse_source, resolve_local
from cortex.spec import BUNDLED_MODEL_SOURCE, ModelSpec

TYPES = ("f16", "q8_0", "q4_0")
TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
SHORT = TEMPLATE.format("Write a long story about the sea.")
LONG = TEMPLATE.format(
    "Here are my notes on the sea. "
    + "The tide comes in over the flats, and the gulls follow the boats home at dusk. " * 80
    + "Now write a long story from them."
)
_KV_SIZE = re.compile(r"llama_kv_cache: size = +([\d.]+) MiB")


def decode_tok_s(engine: LlamaCppEngine, text: str, max_new: int) -> float:
    """Greedy decode speed after ``text``: tokens after the first over first to last."""
    return run_greedy(engine, engine.tokenize_prompt(text), max_new).decode_tok_s


def measure(path: Path, kv_type: str, log: list[str], quick: bool) -> dict[str, float]:
    spec = ModelSpec(
        id="bench", source=BUNDLED_MODEL_SOURCE, context_length=2048, max_batch=1,
        prefix_cache=False, kv_cache_type=kv_type,
        flash_attention=True,  # a quantised V needs it: f16 beside them on the same kernel
    )  # fmt: skip
    log.clear()
    engine = LlamaCppEngine(path, spec, "cpu", 2)
    try:
        found = _KV_SIZE.search("".join(log))
        assert found, "llama.cpp logged no KV cache size"
        decode_tok_s(engine, SHORT, 8)  # warm-up
        return {
            "kv_mib": float(found[1]),
            "estimate_kv_mb": estimate_memory(path, spec).kv_cache_mb,
            "short_tok_s": decode_tok_s(engine, SHORT, 64 if quick else 256),
            "long_tok_s": decode_tok_s(engine, LONG, 32 if quick else 128),
            "long_prompt_tokens": len(engine.tokenize_prompt(LONG)),
        }
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--median", action="store_true", help="medians, not the best runs")
    args = parser.parse_args()
    path = resolve_local(parse_source(BUNDLED_MODEL_SOURCE))
    log: list[str] = []

    @C.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        log.append(text.decode(errors="replace"))

    C.llama_log_set(collect, ctypes.c_void_p(0))
    runs: dict[str, list[dict[str, float]]] = {kv: [] for kv in TYPES}
    for _ in range(1 if args.quick else args.runs):
        for kv_type in TYPES:
            runs[kv_type].append(measure(path, kv_type, log, args.quick))
            print(kv_type, json.dumps(runs[kv_type][-1]), file=sys.stderr, flush=True)
    pick = statistics.median if args.median else max
    summary = {
        kv: {key: pick(r[key] for r in results) for key in results[0]}
        for kv, results in runs.items()
    }
    f16 = summary["f16"]
    how = "median" if args.median else "best"
    print(f"SmolLM2-135M Q4_1, 2 threads, context 2048, {how} of {len(runs['f16'])} runs")
    print(f"{'type':6} {'KV MiB':>8} {'est MB':>7} {'ratio':>6}   {'decode tok/s':>12} "
          f"{'ratio':>6}   {'long decode':>11} {'ratio':>6}")  # fmt: skip
    for kv, m in summary.items():
        print(
            f"{kv:6} {m['kv_mib']:8.2f} {m['estimate_kv_mb']:7.0f} "
            f"{m['kv_mib'] / f16['kv_mib']:6.3f}   {m['short_tok_s']:12.1f} "
            f"{m['short_tok_s'] / f16['short_tok_s']:6.3f}   {m['long_tok_s']:11.1f} "
            f"{m['long_tok_s'] / f16['long_tok_s']:6.3f}"
        )
    print(f"(long: after a {f16['long_prompt_tokens']:.0f}-token prompt; decode: ~20 tokens)")
    if args.json:
        args.json.write_text(json.dumps({how: summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
