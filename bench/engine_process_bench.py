"""What the engine process boundary costs: the same engine in a process vs in-process.

Both sides run the bundled SmolLM2-135M GGUF through ``LlamaCppEngine`` with 2 threads,
greedy, and take requests the same way (a ``GenerationRequest`` whose events reach an
asyncio queue). In-process is how the neuron ran engines before: a thread stepping
the engine, the request handed over by a queue. The engine process is today's path:
``EngineProcess`` (pipe, JSON messages, reader and writer threads). The two alternate
run by run so a drift in the machine's speed hits both; one is idle while the other
is timed (the in-process engine is closed while the process runs, and back).

Lines (median of the runs; ``--quick`` runs fewer and shorter):

1. Single-stream decode tok/s, 256 tokens: first token to last. Target >= 0.97.
2. Time to first token of a 20-token prompt whose KV is cached (so the figure is the
   boundary, not prefill), p50 over 30 requests each: process minus in-process.
   Target <= 2 ms.
3. Aggregate tok/s of 8 concurrent sequences (max_batch 8), 128 tokens each, different
   prompts. Target: within 3 % (ratio >= 0.97).
4. RSS of an engine process with no model loaded (Python, cortex and llama_cpp
   imported): what the memory estimate adds per model (``ENGINE_PROCESS_MB``).

``--buffer-types`` measures instead what llama.cpp's extra buffer types are worth (the
fast path the canary may turn off): prefill tok/s of a ~400-token prompt and
single-stream decode tok/s, engine processes with them on and off, alternated.

Usage: ``.venv/bin/python bench/engine_process_bench.py [--quick] [--buffer-types] [--json OUT]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from cortex.neuron.engines.base import Finished, GenerationRequest, SamplingParams
from cortex.neuron.engines.llamacpp.engine import LlamaCppEngine
from cortex.neuron.files.sources import parse_source, resolve_local
from cortex.neuron.runtime.engine_process import EngineProcess
from cortex.neuron.runtime.sink import QueueSink
from cortex.spec import BUNDLED_MODEL_SOURCE, ModelSpec

TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
TOPICS = ["the sea", "a city", "winter", "a robot", "the moon", "a garden", "trains", "bread"]


class ThreadHost:
    """The old in-process way: one thread owns the engine and steps it."""

    def __init__(self, spec: ModelSpec, path: Path) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        ready = threading.Event()
        self.info = None

        def run() -> None:
            engine = LlamaCppEngine(path, spec, "cpu", 2)
            self.engine = engine
            self.info = engine.info
            ready.set()
            while True:
                try:
                    job = self._jobs.get(block=not engine.has_work())
                except queue.Empty:
                    engine.step()
                    continue
                if job is None:
                    engine.close()
                    return
                engine.submit(job)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait()

    async def tokenize(self, text: str) -> list[int]:
        return await asyncio.to_thread(self.engine.tokenize_prompt, text)

    def submit(self, request: GenerationRequest) -> None:
        self._jobs.put(request)

    async def close(self) -> None:
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)


async def generate(host, tokens: list[int], max_new: int) -> tuple[float, float, int]:
    """(time to first token, first to last token, tokens) of one greedy generation."""
    sink = QueueSink()
    sent = time.perf_counter()
    host.submit(GenerationRequest(tokens, max_new, SamplingParams(temperature=0.0), [], sink=sink))
    first = last = None
    while True:
        event = await sink.queue.get()
        now = time.perf_counter()
        if isinstance(event, Finished):
            return first - sent, (last or now) - first, event.completion_tokens
        first = first or now
        last = now


async def open_host(kind: str, spec: ModelSpec, path: Path):
    if kind == "thread":
        return await asyncio.to_thread(ThreadHost, spec, path)
    # Extra buffer types off on both sides: the same engine either way, and safe on
    # CPUs where llama.cpp's AMX path crashes in-process.
    return await EngineProcess.launch(
        path, spec, "cpu", 2, use_extra_buffer_types=False, on_exit=lambda exit: None
    )


async def measure(kind: str, spec: ModelSpec, path: Path, quick: bool) -> dict[str, float]:
    host = await open_host(kind, spec, path)
    try:
        decode_tokens = 64 if quick else 256
        tokens = await host.tokenize(TEMPLATE.format("Write a long story about the sea."))
        await generate(host, tokens, 8)  # warm-up
        _, span, count = await generate(host, tokens, decode_tokens)
        single = (count - 1) / span
        short = await host.tokenize(TEMPLATE.format("Hi"))
        await generate(host, short, 1)  # its prompt is cached from now on
        ttfts = [(await generate(host, short, 1))[0] for _ in range(10 if quick else 30)]
        prompts = [
            await host.tokenize(TEMPLATE.format(f"Write a long story about {topic}."))
            for topic in TOPICS
        ]
        started = time.perf_counter()
        results = await asyncio.gather(*(generate(host, p, 32 if quick else 128) for p in prompts))
        aggregate = sum(r[2] for r in results) / (time.perf_counter() - started)
        return {
            "single_tok_s": single,
            "ttft_p50_ms": statistics.median(ttfts) * 1000,
            "aggregate_8_tok_s": aggregate,
        }
    finally:
        await host.close()


async def buffer_types(path: Path, runs: int) -> None:
    """Prefill and decode tok/s with llama.cpp's extra buffer types on and off."""
    spec = ModelSpec(id="bench", source=BUNDLED_MODEL_SOURCE, context_length=2048)
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for run in range(runs):
        for on in (True, False):
            host = await EngineProcess.launch(
                path, spec, "cpu", 2, use_extra_buffer_types=on, on_exit=lambda exit: None
            )
            try:
                text = "Tell me about the sea and its waves. " * 40 + f"(run {run} {on})"
                prompt = await host.tokenize(TEMPLATE.format(text))  # never cached
                ttft, _, _ = await generate(host, prompt, 1)
                story = await host.tokenize(TEMPLATE.format("Write a long story about the sea."))
                await generate(host, story, 8)
                _, span, count = await generate(host, story, 256)
                results[on].append((len(prompt) / ttft, (count - 1) / span))
            finally:
                await host.close()
    for on, rows in results.items():
        prefill = statistics.median(r[0] for r in rows)
        decode = statistics.median(r[1] for r in rows)
        print(
            f"extra buffer types {'on ' if on else 'off'}: prefill {prefill:.0f} tok/s, "
            f"decode {decode:.1f} tok/s"
        )


def idle_engine_rss_mb() -> float:
    code = (
        "import cortex.neuron.runtime.engine_host, cortex.neuron.engines.llamacpp.engine\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmRSS'): print(int(line.split()[1]) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--buffer-types", action="store_true")
    args = parser.parse_args()
    path = resolve_local(parse_source(BUNDLED_MODEL_SOURCE))
    if args.buffer_types:
        await buffer_types(path, 1 if args.quick else args.runs)
        return
    spec = ModelSpec(id="bench", source=BUNDLED_MODEL_SOURCE, max_batch=8, context_length=2048)
    runs: dict[str, list[dict[str, float]]] = {"thread": [], "process": []}
    for _ in range(1 if args.quick else args.runs):
        for kind in ("thread", "process"):
            runs[kind].append(await measure(kind, spec, path, args.quick))
    median = {
        kind: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for kind, results in runs.items()
    }
    thread, process = median["thread"], median["process"]
    rows = [
        ("single-stream decode tok/s", "single_tok_s", ">= 0.97"),
        ("8-stream aggregate tok/s", "aggregate_8_tok_s", ">= 0.97"),
    ]
    print(f"{'line':32} {'in-process':>11} {'process':>9} {'ratio':>7}  target")
    for label, key, target in rows:
        ratio = process[key] / thread[key]
        print(f"{label:32} {thread[key]:11.1f} {process[key]:9.1f} {ratio:7.3f}  {target}")
    added = process["ttft_p50_ms"] - thread["ttft_p50_ms"]
    print(
        f"{'TTFT p50, cached prompt (ms)':32} {thread['ttft_p50_ms']:11.2f} "
        f"{process['ttft_p50_ms']:9.2f} {added:+7.2f}  added <= 2 ms"
    )
    rss = idle_engine_rss_mb()
    print(f"idle engine process RSS: {rss:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median": median, "idle_rss_mb": rss}))


if __name__ == "__main__":
    asyncio.run(main())
