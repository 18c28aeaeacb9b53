"""GGUF over two GPUs: single-stream greedy tok/s with split none, layer and row.

Loads the bundled GGUF (SmolLM2-135M Q4_1) with llama-cpp-python's ``Llama(...)``, its
placement parameters made by the engine's own ``model_placement`` (the function the
neuron uses, so the bench measures what a ``split`` spec gets), and decodes ``--tokens``
greedy tokens from one prompt, a warm-up and then ``--runs`` measured runs per mode:

    none   one GPU (cuda:0), as a spec without split
    layer  cuda:0,cuda:1, LLAMA_SPLIT_MODE_LAYER, tensor_split [1, 1]
    row    cuda:0,cuda:1, LLAMA_SPLIT_MODE_ROW,   tensor_split [1, 1]

and prints each mode's tok/s, with layer and row as ratios to none in the same run.
A 135M model is far too small for a split to pay: the numbers show the split's cost
(inter-GPU copies per token), and that each mode loads and answers at all.

Needs 2 CUDA GPUs and a CUDA build of llama.cpp (``CMAKE_ARGS=-DGGML_CUDA=on``);
elsewhere it says so and exits with status 2.

Usage: ``.venv/bin/python bench/gguf_split_bench.py [--tokens 128] [--runs 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import llama_cpp as C

from cortex.neuron.engines.llamacpp.engine import model_placement
from cortex.neuron.files.sources import parse_source, resolve_local
from cortex.neuron.runtime.devices import discover
from cortex.spec import BUNDLED_MODEL_SOURCE

PROMPT = "The history of the bicycle begins"
MODES = {"none": "cuda:0", "layer": "cuda:0,cuda:1", "row": "cuda:0,cuda:1"}
NEEDS = "needs 2 CUDA GPUs and a CUDA build of llama.cpp"


def gpus_or_exit() -> None:
    gpus = [d for d in discover() if d.id.startswith("cuda")]
    offload = bool(C.llama_supports_gpu_offload())
    if len(gpus) < 2 or not offload:
        build = "a CUDA build" if offload else "a CPU-only build"
        print(f"gguf_split_bench: {NEEDS} (found {len(gpus)} GPU(s), {build} of llama.cpp)")
        sys.exit(2)


def tok_per_s(llm: C.Llama, tokens: int) -> float:
    started = time.perf_counter()
    out = llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, top_k=1)
    seconds = time.perf_counter() - started
    return out["usage"]["completion_tokens"] / seconds


def run_mode(path: str, split: str, tokens: int, runs: int) -> float:
    params = model_placement(
        MODES[split], gpu_offload=True, use_extra_buffer_types=False, split=split
    )
    params.pop("use_extra_bufts")  # a model parameter Llama(...) does not take by name
    llm = C.Llama(model_path=path, n_ctx=1024, verbose=False, **params)  # type: ignore[arg-type]
    try:
        tok_per_s(llm, 16)  # warm-up: kernels, caches
        return statistics.median(tok_per_s(llm, tokens) for _ in range(runs))
    finally:
        llm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    gpus_or_exit()
    path = str(resolve_local(parse_source(BUNDLED_MODEL_SOURCE)))
    rates = {split: run_mode(path, split, args.tokens, args.runs) for split in MODES}
    for split, rate in rates.items():
        ratio = rate / rates["none"]
        print(
            f"split={split:<5} devices={MODES[split]:<13} {rate:8.1f} tok/s  x{ratio:.2f} of none"
        )


if __name__ == "__main__":
    main()
