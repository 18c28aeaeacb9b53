"""Benchmark of the dense (transformers) engine, in process, against the GGUF engine beside it.

Engines are driven directly, as a device thread drives them (``submit``, then ``step``
until ``has_work`` is false); no HTTP. The dense checkpoint is the bundled GGUF
dequantised to float32 (``tests/reference.py``, cached in ``.cache/dense-smollm2``).
Every engine gets 2 threads (the machine's cores); TP=2 gets 1 per rank.

Lines (each a warm-up, then the median of ``--runs`` runs):

1. Single-stream greedy decode tok/s: dense fp32 vs the GGUF engine (Q4_1, llama.cpp).
   Rate = completion tokens / time from the first sampled token to the last.
2. Aggregate tok/s, 4 requests submitted together vs the same 4 one after the other,
   dense engine. It serialises requests, so the ratio is ~1.0 (no batching gain); the
   GGUF engine's continuous batching, measured the same way, for contrast.
3. Single-stream tok/s, dense TP=2 (Megatron sharder, gloo, 2 processes) vs TP=1.

Usage: ``.venv/bin/python bench/dense_bench.py [--tokens 64] [--runs 3]`` (``--runs 1
--tokens 32``: a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe a walk through a forest in autumn.",
    "Write a letter to a friend about a trip to the sea.",
]


class _Sink:
    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.finished: Any = None

    def put(self, event: Any) -> None:
        from cortex.neuron.engines.base import Finished

        now = time.perf_counter()
        if isinstance(event, Finished):
            self.finished = event
            return
        self.first = self.first or now
        self.last = now


def _prompt_ids(engine: Any, text: str) -> list[int]:
    from cortex.neuron.prompt.template import render_chat

    info = engine.info
    messages = [{"role": "user", "content": text}]
    rendered = render_chat(
        info.chat_template, messages, bos_token=info.bos_token, eos_token=info.eos_token
    )
    return engine.tokenize_prompt(rendered)


def _run(engine: Any, prompts: list[str], tokens: int) -> tuple[float, list[_Sink]]:
    """Submit every prompt at once and step until done: (wall seconds, sinks)."""
    from cortex.neuron.engines.base import GenerationRequest, SamplingParams

    sinks = []
    started = time.perf_counter()
    for text in prompts:
        sink = _Sink()
        request = GenerationRequest(
            _prompt_ids(engine, text), tokens, SamplingParams(temperature=0), [], sink
        )
        engine.submit(request)
        sinks.append(sink)
    while engine.has_work():
        engine.step()
    return time.perf_counter() - started, sinks


def single_stream(engine: Any, tokens: int, runs: int) -> float:
    rates = []
    for i in range(runs + 1):
        _, [sink] = _run(engine, [PROMPTS[i % len(PROMPTS)]], tokens)
        done = sink.finished.completion_tokens
        if i and sink.first is not None and sink.last > sink.first:
            rates.append((done - 1) / (sink.last - sink.first))
    return statistics.median(rates)


def aggregate(engine: Any, tokens: int, runs: int, together: bool) -> float:
    rates = []
    for i in range(runs + 1):
        if together:
            wall, sinks = _run(engine, PROMPTS, tokens)
        else:
            wall, sinks = 0.0, []
            for text in PROMPTS:
                seconds, [sink] = _run(engine, [text], tokens)
                wall += seconds
                sinks.append(sink)
        if i:
            rates.append(sum(s.finished.completion_tokens for s in sinks) / wall)
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import reference as ref
    from cortex.neuron.engines.dense.engine import create_dense_engine
    from cortex.neuron.engines.llamacpp.engine import LlamaCppEngine
    from cortex.spec import ModelSpec

    dense_dir = REPO / ".cache" / "dense-smollm2"
    if not (dense_dir / ref.DENSE_WEIGHTS).is_file():
        ref.make_dense_checkpoint(dense_dir)
    gguf = ref.gguf_path()

    print(f"\n{'line':<52} {'measured':>9} {'baseline':>9} {'ratio':>6}", flush=True)

    def row(name: str, value: float, baseline: float) -> None:
        print(f"{name:<52} {value:9.1f} {baseline:9.1f} {value / baseline:6.2f}", flush=True)

    dense = create_dense_engine(
        dense_dir, ModelSpec(id="dense", source=f"file:{dense_dir}"), "cpu", 2
    )
    gguf_engine = LlamaCppEngine(gguf, ModelSpec(id="gguf", source=f"file:{gguf}"), "cpu", 2)
    try:
        dense_rate = single_stream(dense, args.tokens, args.runs)
        gguf_rate = single_stream(gguf_engine, args.tokens, args.runs)
        row("1  single stream tok/s: dense fp32 / GGUF Q4_1", dense_rate, gguf_rate)
        together = aggregate(dense, args.tokens, args.runs, together=True)
        apart = aggregate(dense, args.tokens, args.runs, together=False)
        row("2  dense, 4 together / 4 one by one (serialised)", together, apart)
        g_together = aggregate(gguf_engine, args.tokens, args.runs, together=True)
        g_apart = aggregate(gguf_engine, args.tokens, args.runs, together=False)
        row("2c GGUF, 4 together / 4 one by one (batched)", g_together, g_apart)
    finally:
        dense.close()
        gguf_engine.close()

    tp2 = create_dense_engine(
        dense_dir, ModelSpec(id="tp2", source=f"file:{dense_dir}", tensor_parallel=2), "cpu", 2
    )
    try:
        tp_rate = single_stream(tp2, args.tokens, args.runs)
    finally:
        tp2.close()
    row("3  single stream tok/s: dense TP=2 / TP=1", tp_rate, dense_rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
