"""The measurements behind each line of the table, and the rows built from them."""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
from _config import FILLER_WORDS, LONG_PROMPTS, Config, Line
from _load import ForeignLoad
from _procs import Server
from _raw_llama import RawWorker
from _streams import (
    StreamResult,
    aggregate_rate,
    chat_body,
    decode_phase_rate,
    run_concurrent,
    stream_chat,
    user,
)

# -- line 1: single-stream decode vs raw llama.cpp ---------------------------------------


def single_stream_decode(
    cfg: Config, server: Server, model_id: str, raw: RawWorker, own_pids: list[int]
) -> dict[str, Any]:
    """Line 1: warm-ups, then neuron and raw runs alternately, the same tokens each."""
    body = chat_body(model_id, user(LONG_PROMPTS[0]), cfg.decode_tokens)
    load_neuron, load_raw = ForeignLoad(own_pids), ForeignLoad(own_pids)
    neuron: list[StreamResult] = []
    baseline: list[dict[str, Any]] = []
    with httpx.Client(timeout=600) as client:
        n_tokens = stream_chat(client, server.url, body).completion_tokens  # warm-up
        raw.call(cmd="single", n_tokens=n_tokens)  # warm-up
        for _ in range(cfg.runs):
            with load_neuron.measure():
                neuron.append(stream_chat(client, server.url, body))
            with load_raw.measure():
                baseline.append(raw.call(cmd="single", n_tokens=n_tokens))
    return {
        "neuron": neuron,
        "raw": baseline,
        "raw_prompt_tokens": raw.prompt_tokens,
        "other_load": max(load_neuron.cores, load_raw.cores),
    }


def line_decode(measured: dict[str, Any]) -> Line:
    neuron: list[StreamResult] = measured["neuron"]
    neuron_rates = [r.decode_rate for r in neuron]
    raw_rates = [r["rate"] for r in measured["raw"]]
    first = neuron[0]
    return Line(
        key="1",
        name="decode, 1 stream: neuron vs raw llama.cpp",
        unit="tok/s",
        cortex=statistics.median(neuron_rates),
        baseline=statistics.median(raw_rates),
        ratio=statistics.median(neuron_rates) / statistics.median(raw_rates),
        target=">= 0.95",
        other_load=measured["other_load"],
        details={
            "neuron_runs": neuron_rates,
            "raw_runs": raw_rates,
            "pair_ratios": [n / r for n, r in zip(neuron_rates, raw_rates, strict=True)],
            "neuron_ttft_ms": [round(r.ttft * 1000, 1) for r in neuron],
            "completion_tokens": [r.completion_tokens for r in neuron],
            "prompt_tokens_neuron": first.usage["prompt_tokens"] if first.usage else None,
            "prompt_tokens_raw": measured["raw_prompt_tokens"],
            "finish_reason": first.finish_reason,
            "same_text_as_raw": first.text == measured["raw"][0]["text"],
        },
    )


def raw_batched_ceiling(cfg: Config, raw: RawWorker, own_pids: list[int]) -> dict[str, Any]:
    """Line 2r: raw llama.cpp decoding ``cfg.streams`` sequences per step, then 1."""
    load = ForeignLoad(own_pids)
    raw.call(cmd="batched", n_seq=cfg.streams, steps=8)  # warm-up
    batched, single = [], []
    for _ in range(cfg.runs):
        with load.measure():
            batched.append(raw.call(cmd="batched", n_seq=cfg.streams, steps=cfg.batched_steps))
            single.append(raw.call(cmd="batched", n_seq=1, steps=cfg.batched_steps))
    return {
        "batched": [r["rate"] for r in batched],
        "single": [r["rate"] for r in single],
        "other_load": load.cores,
    }


# -- lines 2 and 3: aggregate throughput ------------------------------------------------


def measure(cfg: Config, load: ForeignLoad, once: Callable[[], float]) -> tuple[float, list[float]]:
    """A warm-up call, then the median of ``cfg.runs`` timed calls."""
    once()
    values = []
    for _ in range(cfg.runs):
        with load.measure():
            values.append(once())
    return statistics.median(values), values


def stream_bodies(cfg: Config, model_id: str, count: int) -> list[dict[str, Any]]:
    """``count`` long-answer prompts, tagged so no run reuses another run's prompt cache."""
    tag = f"{time.time_ns():x}"
    prompts = [LONG_PROMPTS[i % len(LONG_PROMPTS)] for i in range(count)]
    return [chat_body(model_id, user(f"[{tag}] {p}"), cfg.stream_tokens) for p in prompts]


def aggregate(
    cfg: Config, url: str, model_id: str, streams: int, load: ForeignLoad
) -> dict[str, Any]:
    """Median aggregate tok/s of ``streams`` concurrent streams, and of their decode phase."""
    tokens: list[int] = []
    decode: list[float] = []

    def once() -> float:
        results = run_concurrent(url, stream_bodies(cfg, model_id, streams))
        tokens.append(sum(r.completion_tokens for r in results))
        decode.append(decode_phase_rate(results))
        return aggregate_rate(results)

    median, values = measure(cfg, load, once)
    return {
        "median": median,
        "runs": values,
        "tokens": tokens[1:],
        "decode_phase_median": statistics.median(decode[1:]),
        "decode_phase_runs": decode[1:],
        "other_load": load.cores,
    }


def line_batching(cfg: Config, one: dict[str, Any], many: dict[str, Any]) -> Line:
    return Line(
        key="2",
        name=f"aggregate: {cfg.streams} streams vs 1 (neuron)",
        unit="tok/s",
        cortex=many["median"],
        baseline=one["median"],
        ratio=many["median"] / one["median"],
        target=">= 1.6",
        other_load=max(one["other_load"], many["other_load"]),
        details={"neuron_1_stream": one, f"neuron_{cfg.streams}_streams": many},
    )


def line_batching_ceiling(cfg: Config, raw: dict[str, Any]) -> Line:
    batched, single = statistics.median(raw["batched"]), statistics.median(raw["single"])
    return Line(
        key="2r",
        name=f"raw llama.cpp: {cfg.streams} seqs batched vs 1, decode only",
        unit="tok/s",
        cortex=batched,
        baseline=single,
        ratio=batched / single,
        target="(ceiling)",
        other_load=raw["other_load"],
        details={"batched_runs": raw["batched"], "single_runs": raw["single"]},
    )


def line_vs_server(cfg: Config, neuron: dict[str, Any], server: dict[str, Any]) -> Line:
    return Line(
        key="3",
        name=f"aggregate, {cfg.streams} streams: neuron vs llama_cpp.server",
        unit="tok/s",
        cortex=neuron["median"],
        baseline=server["median"],
        ratio=neuron["median"] / server["median"],
        target=">= 1.5",
        other_load=max(neuron["other_load"], server["other_load"]),
        details={
            "neuron": neuron,
            "llama_cpp_server": server,
            "llama_cpp_server_tokens_counted_as": "content chunks (its stream carries no usage)",
        },
    )


# -- line 4: multi-turn time to first token ---------------------------------------------


def user_message(turn: int, words: int) -> str:
    rng = random.Random(turn)
    body = " ".join(rng.choice(FILLER_WORDS) for _ in range(words))
    return f"Part {turn} of my notes: {body}. Summarise this part in one short sentence."


def system_message(nonce: str) -> dict[str, str]:
    return {"role": "system", "content": f"Session {nonce}. You are a helpful assistant."}


def conversation(
    cfg: Config, client: httpx.Client, url: str, model_id: str, nonce: str
) -> tuple[list[StreamResult], list[dict[str, str]]]:
    """One growing chat under one system message: each turn's result, and the history."""
    history: list[dict[str, str]] = []
    turns: list[StreamResult] = []
    for turn in range(1, cfg.turns + 1):
        history.append({"role": "user", "content": user_message(turn, cfg.user_words)})
        body = chat_body(model_id, [system_message(nonce), *history], cfg.answer_tokens)
        turns.append(stream_chat(client, url, body))
        history.append({"role": "assistant", "content": turns[-1].text})
    return turns, history


def uncached_turns(
    cfg: Config, client: httpx.Client, url: str, model_id: str, history: list[dict[str, str]]
) -> list[StreamResult]:
    """Turn 1 and the last turn of ``history``, each under a never-seen system message."""
    out = []
    for turn in (1, cfg.turns):
        messages = [system_message(f"fresh-{time.time_ns():x}"), *history[: 2 * turn - 1]]
        out.append(stream_chat(client, url, chat_body(model_id, messages, cfg.answer_tokens)))
    return out


def multiturn(cfg: Config, server: Server, model_id: str, own_pids: list[int]) -> list[Line]:
    """Lines 4a and 4b: a warm-up conversation, then ``cfg.runs`` new ones (fresh nonces)."""
    load_cached, load_fresh = ForeignLoad(own_pids), ForeignLoad(own_pids)
    cached: list[list[StreamResult]] = []
    fresh: list[list[StreamResult]] = []
    with httpx.Client(timeout=600) as client:
        for run in range(cfg.runs + 1):  # run 0 is the warm-up
            with load_cached.measure() if run else contextlib.nullcontext():
                turns, history = conversation(
                    cfg, client, server.url, model_id, f"conv-{time.time_ns():x}"
                )
            with load_fresh.measure() if run else contextlib.nullcontext():
                ends = uncached_turns(cfg, client, server.url, model_id, history)
            if run:
                cached.append(turns)
                fresh.append(ends)
    every_turn = list(range(1, cfg.turns + 1))
    return [
        ttft_line("4a", "prefix cache", every_turn, cached, load_cached.cores, "<= 2"),
        ttft_line("4b", "no cache", [1, cfg.turns], fresh, load_fresh.cores, "(contrast)"),
    ]


def ttft_line(
    key: str, mode: str, turns: list[int], runs: list[list[StreamResult]], load: float, target: str
) -> Line:
    """Median TTFT of the last turn vs the first; ``runs[i][j]`` is turn ``turns[j]``."""
    first = statistics.median(r[0].ttft for r in runs)
    last = statistics.median(r[-1].ttft for r in runs)
    usage = [t.usage or {} for t in runs[0]]
    return Line(
        key=key,
        name=f"TTFT turn {turns[-1]} vs turn 1, {mode}",
        unit="ms",
        cortex=last * 1000,
        baseline=first * 1000,
        ratio=last / first,
        target=target,
        other_load=load,
        details={
            "turns": turns,
            "ttft_ms_median": [
                round(statistics.median(r[i].ttft for r in runs) * 1000, 1)
                for i in range(len(runs[0]))
            ],
            "ttft_ms_runs": [[round(t.ttft * 1000, 1) for t in r] for r in runs],
            "prompt_tokens": [u.get("prompt_tokens") for u in usage],
            "cached_tokens": [
                (u.get("prompt_tokens_details") or {}).get("cached_tokens") for u in usage
            ],
            "completion_tokens": [u.get("completion_tokens") for u in usage],
        },
    )
