"""The one-shot check of a GPU host: both engines on the GPU, against the CPU, same run.

Run by ``bench/gpu_check.sh`` after it builds llama.cpp and torch with CUDA. Engines are
driven directly (``submit``, then ``step`` until ``has_work`` is false), as the device
thread of an engine process drives them; no HTTP.

Lines:

1. GGUF greedy equality: the bundled model (SmolLM2-135M Q4_1) answers four prompts on
   the GPU and on the CPU; the text of the first 16 tokens must match (llama.cpp's CUDA
   and CPU kernels round differently, so a near tie may part them: each mismatch is
   printed with both texts, and the exit code is 1).
2. GGUF single-stream decode tok/s, GPU / CPU.
3. GGUF aggregate tok/s of 8 streams batched together (``max_batch = 8``), GPU / CPU.
4. Dense (the same model dequantised to fp32 safetensors, ``tests/reference.py``, run in
   the dtype the engine picks for each device): greedy equality of the first 16 tokens
   (reported, not required: a GPU dtype other than fp32 may part at a near tie) and
   single-stream tok/s, GPU / CPU.

``--device cpu`` runs everything against the CPU twice: a dry run of the script on a
machine without a GPU (every ratio ~1).

Usage: ``bench/gpu_check.sh [--device cuda:0] [--tokens 64] [--runs 3]``
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from dense_bench import PROMPTS, _prompt_ids, _run, single_stream  # noqa: E402

EQUALITY_TOKENS = 16
STREAMS = 8


class _TextSink:
    """Keeps the text a greedy request produced."""

    def __init__(self) -> None:
        self.text = ""
        self.finished: Any = None

    def put(self, event: Any) -> None:
        from cortex.neuron.engines.base import Finished, TextChunk

        if isinstance(event, TextChunk):
            self.text += event.text
        elif isinstance(event, Finished):
            self.finished = event


def greedy_texts(engine: Any, tokens: int) -> list[str]:
    from cortex.neuron.engines.base import GenerationRequest, SamplingParams

    texts = []
    for prompt in PROMPTS:
        sink = _TextSink()
        ids = _prompt_ids(engine, prompt)
        engine.submit(GenerationRequest(ids, tokens, SamplingParams(temperature=0), [], sink))
        while engine.has_work():
            engine.step()
        texts.append(sink.text)
    return texts


def compare(label: str, on_device: list[str], on_cpu: list[str]) -> bool:
    same = sum(a == b for a, b in zip(on_device, on_cpu, strict=True))
    print(f"{label:<52} {same}/{len(on_cpu)} prompts identical", flush=True)
    for prompt, a, b in zip(PROMPTS, on_device, on_cpu, strict=True):
        if a != b:
            print(f"   {prompt!r}\n     device: {a!r}\n     cpu:    {b!r}", flush=True)
    return same == len(on_cpu)


def streams(engine: Any, tokens: int, runs: int) -> float:
    """Aggregate tok/s of ``STREAMS`` greedy requests submitted together."""
    prompts = [PROMPTS[i % len(PROMPTS)] + f" (take {i})" for i in range(STREAMS)]
    rates = []
    for i in range(runs + 1):
        wall, sinks = _run(engine, prompts, tokens)
        if i:
            rates.append(sum(s.finished.completion_tokens for s in sinks) / wall)
    return sorted(rates)[len(rates) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import llama_cpp

    import reference as ref
    from cortex.neuron.engines.llamacpp.engine import LlamaCppEngine
    from cortex.spec import ModelSpec

    on_gpu = args.device != "cpu"
    if on_gpu and not llama_cpp.llama_supports_gpu_offload():
        print(
            "gpu_bench: this llama-cpp-python is a CPU-only build; run bench/gpu_check.sh, "
            "which rebuilds it with CUDA",
            file=sys.stderr,
        )
        return 2
    threads = len(os.sched_getaffinity(0))
    gguf = ref.gguf_path()
    print(f"device {args.device}, CPU threads {threads}, {args.tokens} tokens a request")
    print(f"\n{'line':<52} {'device':>9} {'cpu':>9} {'ratio':>6}", flush=True)

    def row(name: str, value: float, baseline: float) -> None:
        print(f"{name:<52} {value:9.1f} {baseline:9.1f} {value / baseline:6.2f}", flush=True)

    spec = ModelSpec(id="gguf", source=f"file:{gguf}", max_batch=STREAMS)
    ok = True
    # keyed by role, not device id: a dry run has "cpu" on both sides
    places = {"device": args.device, "cpu": "cpu"}
    engines = {role: LlamaCppEngine(gguf, spec, at, threads) for role, at in places.items()}
    try:
        texts = {role: greedy_texts(e, EQUALITY_TOKENS) for role, e in engines.items()}
        ok &= compare("1  GGUF greedy, first 16 tokens", texts["device"], texts["cpu"])
        rates = {role: single_stream(e, args.tokens, args.runs) for role, e in engines.items()}
        row("2  GGUF single stream tok/s", rates["device"], rates["cpu"])
        batched = {role: streams(e, args.tokens, args.runs) for role, e in engines.items()}
        row(f"3  GGUF {STREAMS} streams batched, aggregate tok/s", *batched.values())
    finally:
        for engine in engines.values():
            engine.close()

    from cortex.neuron.engines.dense.engine import create_dense_engine

    dense_dir = REPO / ".cache" / "dense-smollm2"
    if not (dense_dir / ref.DENSE_WEIGHTS).is_file():
        ref.make_dense_checkpoint(dense_dir)
    dense_spec = ModelSpec(id="dense", source=f"file:{dense_dir}")
    dense = {
        role: create_dense_engine(dense_dir, dense_spec, at, threads) for role, at in places.items()
    }
    try:
        texts = {role: greedy_texts(e, EQUALITY_TOKENS) for role, e in dense.items()}
        compare("4  dense greedy, first 16 tokens", texts["device"], texts["cpu"])
        rates = {role: single_stream(e, args.tokens, args.runs) for role, e in dense.items()}
        row("4  dense single stream tok/s", rates["device"], rates["cpu"])
    finally:
        for engine in dense.values():
            engine.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
