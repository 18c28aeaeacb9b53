"""What llama.cpp's flash attention costs or gives on this machine (a spec's
``flash_attention``; "auto" turns it off in a CPU-only build: engines/llamacpp/attention.py).

The bundled SmolLM2-135M GGUF through ``LlamaCppEngine`` in-process, 2 threads, one
sequence, greedy: a prompt of about 60, 1,000 and 3,000 tokens, then 64 new tokens. On
and off alternate run by run, so a drift in the machine's speed hits both.

Lines, per prompt length: prefill tok/s and decode tok/s (first token to last) with
flash attention on and off, and their ratios off / on.

Usage: ``.venv/bin/python bench/attention_bench.py [--runs N] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _greedy_run import run_greedy

from cortex.neuron.engines.llamacpp.engine import LlamaCppEngine
from cortex.neuron.files.sources import parse_source, resolve_local
from cortex.spec import BUNDLED_MODEL_SOURCE, ModelSpec

FILLER = (
    "The river town kept its ledgers in a stone house by the bridge, and every spring "
    "the clerks copied the old pages onto new paper before the floods came. "
)
NEW_TOKENS = 64


def prompt_of(words: int) -> str:
    filler = (FILLER * (words // len(FILLER.split()) + 1)).split()[:words]
    return (
        "<|im_start|>user\nRead this:\n\n" + " ".join(filler) + "\n\nNow write a long "
        "story about the town's clerks.<|im_end|>\n<|im_start|>assistant\n"
    )


def measure(engine: LlamaCppEngine, prompt: str) -> dict[str, float]:
    tokens = engine.tokenize_prompt(prompt)
    started = time.perf_counter()
    # use_cache off: every run prefills the whole prompt
    sink = run_greedy(engine, tokens, NEW_TOKENS, use_cache=False)
    assert sink.first is not None and sink.finished is not None
    generated = sink.finished.completion_tokens
    assert generated > 8, "too few tokens"
    return {
        "prompt_tokens": len(tokens),
        "prefill_tok_s": len(tokens) / (sink.first - started),
        "decode_tok_s": sink.decode_tok_s,
        "tokens": generated,
    }


def spec_of(flash: bool) -> ModelSpec:
    return ModelSpec(
        id="bench", source=BUNDLED_MODEL_SOURCE, context_length=4096, max_batch=1,
        prefix_cache=False, flash_attention=flash,
        # Off: they die of SIGILL on batches on some Xeons (the neuron's canary finds
        # that; an in-process bench has none).
        extra_buffer_types=False,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    path = resolve_local(parse_source(BUNDLED_MODEL_SOURCE))
    engines = {flash: LlamaCppEngine(path, spec_of(flash), "cpu", 2) for flash in (True, False)}
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for words in (40, 750, 2300):
            prompt = prompt_of(words)
            runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
            for _ in range(args.runs):
                for flash, engine in engines.items():
                    result = measure(engine, prompt)
                    runs["on" if flash else "off"].append(result)
                    print(words, flash, json.dumps(result), file=sys.stderr, flush=True)
            results[str(words)] = runs
    finally:
        for engine in engines.values():
            engine.close()

    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"SmolLM2-135M Q4_1, 2 threads, one sequence, median of {args.runs} runs")
    print("prompt  prefill on / off (tok/s)  ratio   decode on / off (tok/s)  ratio")
    for runs in results.values():
        n = int(runs["on"][0]["prompt_tokens"])
        p_on, p_off = median(runs["on"], "prefill_tok_s"), median(runs["off"], "prefill_tok_s")
        d_on, d_off = median(runs["on"], "decode_tok_s"), median(runs["off"], "decode_tok_s")
        print(
            f"{n:6d}  {p_on:8.1f} / {p_off:8.1f}      {p_off / p_on:5.2f}   "
            f"{d_on:8.1f} / {d_off:8.1f}     {d_off / d_on:5.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
