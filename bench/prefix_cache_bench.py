"""How much of a follow-up prompt comes from the KV cache when conversations take turns.

K conversations (default 8) on one model with ``max_batch`` 4, each with a ~400-token
system prompt of its own after the template header, take turns for 3 turns, greedy,
12 new tokens a turn. Printed: the share of follow-up prompt tokens (turns 2 and 3)
served from the cache, and the time to first token of the last turns against the
first, with the host-RAM tier on (``kv_host_cache_mb`` 512) and off (0, slots only),
in one run; then with the disk tier (``--kv-cache-dir``, a temporary folder) and the
engine process closed and started again before the last turn, the share of the last
turn's prompt tokens cached. Targets (issue 15): >= 90 % cached, also on the turn after
the reload; TTFT of late turns <= 1.5x turn 1.

The engine runs in an engine process, as the neuron runs it (``EngineProcess``).

Usage: ``.venv/bin/python bench/prefix_cache_bench.py [--conversations K] [--turns N]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from cortex.neuron.engines.base import Finished, GenerationRequest, SamplingParams
from cortex.neuron.files.sources import parse_source, resolve_local
from cortex.neuron.runtime.engine_process import EngineProcess
from cortex.neuron.runtime.sink import QueueSink
from cortex.spec import BUNDLED_MODEL_SOURCE, ModelSpec

TOPICS = ["rivers", "mountains", "the sea", "deserts", "forests", "cities", "trains", "bread"]


def system_prompt(topic: str) -> str:
    fact = "Fact {} about {}: it matters to people who study it."
    facts = " ".join(fact.format(i, topic) for i in range(30))
    return f"<|im_start|>system\nYou are an expert on {topic}. {facts}<|im_end|>\n"


async def turn(host: EngineProcess, prompt: str) -> tuple[str, Finished, float]:
    tokens = await host.tokenize(prompt)
    sink = QueueSink()
    sent = time.perf_counter()
    host.submit(GenerationRequest(tokens, 12, SamplingParams(temperature=0.0), [], sink=sink))
    text, first = "", None
    while True:
        event = await sink.queue.get()
        if isinstance(event, Finished):
            return text, event, (first or time.perf_counter()) - sent
        first = first or time.perf_counter()
        text += event.text


async def run(
    host_mb: int, conversations: int, turns: int, disk: Path | None = None
) -> dict[str, float]:
    """With ``disk``, the engine process is closed and started again before the last
    turn, its disk tier in ``disk``."""
    path = resolve_local(parse_source(BUNDLED_MODEL_SOURCE))
    spec = ModelSpec(
        id="bench",
        source=BUNDLED_MODEL_SOURCE,
        max_batch=4,
        context_length=4096,
        kv_host_cache_mb=host_mb,
    )

    async def launch() -> EngineProcess:
        return await EngineProcess.launch(
            path, spec, "cpu", 2, use_extra_buffer_types=True, on_exit=lambda exit: None,
            kv_disk_dir=disk,
        )  # fmt: skip

    host = await launch()
    try:
        prompts = {topic: system_prompt(topic) for topic in TOPICS[:conversations]}
        follow_prompt = follow_cached = last_prompt = last_cached = 0
        ttft: dict[int, list[float]] = {}
        for number in range(turns):
            if disk is not None and number == turns - 1:
                await host.close()
                host = await launch()
            for topic in prompts:
                prompts[topic] += (
                    f"<|im_start|>user\nTell me more, part {number}.<|im_end|>\n"
                    "<|im_start|>assistant\n"
                )
                text, done, first = await turn(host, prompts[topic])
                prompts[topic] += text + "<|im_end|>\n"
                ttft.setdefault(number, []).append(first)
                if number > 0:
                    follow_prompt += done.prompt_tokens
                    follow_cached += done.cached_tokens
                if number == turns - 1:
                    last_prompt += done.prompt_tokens
                    last_cached += done.cached_tokens
        return {
            "cached_share": follow_cached / follow_prompt,
            "last_cached_share": last_cached / last_prompt,
            "ttft_first_ms": statistics.median(ttft[0]) * 1000,
            "ttft_last_ms": statistics.median(ttft[turns - 1]) * 1000,
        }
    finally:
        await host.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    for host_mb in (0, 512):
        result = await run(host_mb, args.conversations, args.turns)
        print(
            f"kv_host_cache_mb={host_mb:4d}: {result['cached_share']:6.1%} of follow-up prompt "
            f"tokens cached; TTFT turn 1 {result['ttft_first_ms']:.0f} ms, turn {args.turns} "
            f"{result['ttft_last_ms']:.0f} ms "
            f"({result['ttft_last_ms'] / result['ttft_first_ms']:.2f}x)",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as folder:
        result = await run(512, args.conversations, args.turns, disk=Path(folder))
    print(
        f"disk tier, engine restarted before turn {args.turns}: "
        f"{result['last_cached_share']:6.1%} of turn {args.turns}'s prompt tokens cached; "
        f"TTFT turn 1 {result['ttft_first_ms']:.0f} ms, turn {args.turns} "
        f"{result['ttft_last_ms']:.0f} ms "
        f"({result['ttft_last_ms'] / result['ttft_first_ms']:.2f}x)",
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
