"""Benchmark of cortex's neuron against raw llama.cpp and llama-cpp-python's own server.

One run, one table, one JSON file. Everything the benchmark needs (the neuron, the
llama-cpp-python server, a raw llama.cpp decode loop) is started here, as subprocesses on
free loopback ports, and stopped at the end, also on error. The model is the bundled
SmolLM2-135M-Instruct Q4_1 GGUF; every engine runs with 2 threads (the machine's cores).
Nothing runs concurrently with anything else being timed: the raw loop's child process
sleeps on its command pipe while the neuron works and the other way round, and
llama_cpp.server only starts once the neuron has stopped.

Lines of the table (each figure: a warm-up run, then the median of 3 runs; 1 run with
``--quick``, which also shortens every generation):

1.  Single-stream decode tok/s, neuron over HTTP vs a raw llama.cpp decode loop.
    Neuron (model loaded with the defaults, max_batch 4): one streaming greedy chat
    completion of 256 tokens; rate = completion tokens (from ``usage``) / (time of the last
    content chunk - time of the first). Raw: the same GGUF through llama-cpp-python's
    low-level API in a child process, n_threads 2, n_batch 512, one sequence, a greedy
    sampler chain, the same prompt tokens (the model's chat template, rendered as the
    neuron renders it) and the same number of tokens, timed the same way (first sampled
    token to last). Neuron and raw runs alternate, so a drift in the machine's speed hits
    both. Ratio of the medians, target >= 0.95: HTTP, streaming and the engine's per-step
    Python work should cost under 5% of decode time.
2.  Aggregate tok/s, 8 concurrent streams vs 1 stream, both through the neuron (model
    reloaded with max_batch 8), 160 tokens per stream, eight different long-answer prompts
    tagged per run so no run reuses another's prompt cache. Aggregate = total completion
    tokens / wall time from the first request sent to the last one finished (prefill
    included). Target >= 1.6 (continuous batching).
2r. Reference for line 2, no target: what llama.cpp itself gains on this CPU from decoding
    8 sequences per ``llama_decode`` instead of 1 (raw loop, 160 decode steps after the
    prompt as in line 2, prefill untimed). Line 2 cannot exceed it: it also pays for the 8
    prompts. Printed under the table: the neuron's 8-stream rate from first token to
    last, against it.
3.  Aggregate tok/s with 8 concurrent streams, neuron (line 2's figure) vs
    ``python -m llama_cpp.server`` (same model, 2 threads, n_ctx 4096, n_batch 512, the
    same messages over streaming ``/v1/chat/completions``; it serves one request at a
    time, and runs with ``--interrupt_requests False`` or each new request would abort the
    running one). Its stream carries no usage: its completion tokens are its content
    chunks (one per token). Target >= 1.5.
4a. Time to first token of turn 10 vs turn 1 of a growing chat (each turn adds a ~200-token
    user message and the assistant's previous answer, up to 32 tokens: ~2.3k prompt
    tokens at turn 10), with the neuron's prefix cache. Every run is a new conversation
    (a fresh nonce in its system message). Target <= 2: only what is new gets prefilled.
4b. The same "without cache", for contrast: turn 1 and turn 10 of each 4a conversation
    sent again under a never-seen system message, so no prefix is shared and the whole
    history is prefilled.

The machine may be shared: "other load" is the CPU (in cores) that processes outside this
benchmark used during the timed runs (psutil's system CPU times minus ours, steal
included). Anything well above 0 means that line is perturbed. Each phase first waits
(up to 15 s) for the machine to go quiet.

Usage: ``.venv/bin/python bench/neuron_bench.py --json OUT [--quick]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _config import MODEL_SOURCE, Config, Line
from _load import ForeignLoad, machine_info, wait_for_quiet
from _measurements import (
    aggregate,
    line_batching,
    line_batching_ceiling,
    line_decode,
    line_vs_server,
    multiturn,
    raw_batched_ceiling,
    single_stream_decode,
)
from _procs import (
    reload_neuron_model,
    start_llama_server,
    start_neuron,
    uses_extra_buffer_types,
)
from _raw_llama import RawWorker
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 132)


# -- orchestration and report -----------------------------------------------------------


def run_neuron_phase(cfg: Config, stack: contextlib.ExitStack, log_dir: Path) -> dict[str, Any]:
    """Everything measured on the neuron: lines 1 (its side), 2, 3 (its side) and 4."""
    out: dict[str, Any] = {}
    neuron = start_neuron(stack, log_dir, "bench")
    raw = RawWorker(stack, log_dir, uses_extra_buffer_types(neuron, "bench"))
    own = [os.getpid(), neuron.proc.pid, raw.proc.pid]
    step("line 1: neuron (model loaded with defaults) and raw llama.cpp, alternately", cfg)
    out["single"] = single_stream_decode(cfg, neuron, "bench", raw, own)
    step(f"line 2r: raw llama.cpp, {cfg.streams} sequences per step vs 1", cfg)
    out["ceiling"] = raw_batched_ceiling(cfg, raw, own)
    raw.stop()
    own.remove(raw.proc.pid)

    reload_neuron_model(neuron, "bench", "bench8", max_batch=cfg.streams)
    step(f"line 2: neuron, 1 stream then {cfg.streams} streams (max_batch {cfg.streams})", cfg)
    out["agg1"] = aggregate(cfg, neuron.url, "bench8", 1, ForeignLoad(own))
    out["agg8"] = aggregate(cfg, neuron.url, "bench8", cfg.streams, ForeignLoad(own))

    step(f"line 4: neuron, {cfg.turns}-turn chats, with and without a shared prefix", cfg)
    out["turns"] = multiturn(cfg, neuron, "bench8", own)
    neuron.stop()
    return out


def run_llama_server_phase(
    cfg: Config, stack: contextlib.ExitStack, log_dir: Path
) -> dict[str, Any] | str:
    """Line 3's baseline, or why it could not be measured."""
    step(f"line 3: llama_cpp.server, {cfg.streams} concurrent streams", cfg)
    server = start_llama_server(stack, log_dir)
    try:
        result = aggregate(
            cfg, server.url, "bench", cfg.streams, ForeignLoad([os.getpid(), server.proc.pid])
        )
    except RuntimeError:
        code = server.proc.poll()
        if code is None or code >= 0:
            raise
        # It cannot turn llama.cpp's extra CPU buffer types off: where they crash (a Xeon
        # whose hypervisor hides AMX: SIGILL on any batch) it dies, as an engine of the
        # neuron's would without its canary. The other lines stand.
        return f"llama_cpp.server died of {signal.Signals(-code).name} during the run"
    server.stop()
    # It serves one request at a time: a "decode phase" of its streams means nothing.
    for key in ("decode_phase_median", "decode_phase_runs"):
        result.pop(key)
    return result


def step(title: str, cfg: Config) -> None:
    load = wait_for_quiet(cfg.quiet_wait_s)
    console.print(f"[dim]· {title} (other load at start: {load:.2f} cores)[/dim]")


def render(cfg: Config, lines: list[Line]) -> None:
    table = Table(title="cortex neuron benchmark" + (" (--quick)" if cfg.quick else ""))
    for column in ("#", "measurement", "cortex", "baseline", "ratio", "target", "result"):
        table.add_column(column, justify="left" if column == "measurement" else "right")
    table.add_column("other load", justify="right")
    verdict = {True: "[green]pass[/green]", False: "[red]MISS[/red]", None: "[dim]—[/dim]"}
    for line in lines:
        table.add_row(
            line.key,
            line.name,
            f"{line.cortex:.1f} {line.unit}",
            "" if line.baseline is None else f"{line.baseline:.1f} {line.unit}",
            f"{line.ratio:.3f}",
            line.target,
            verdict[line.passed],
            f"{line.other_load:.2f} cores",
        )
    console.print(table)
    console.print(
        "[dim]cortex / baseline: 1) neuron / raw loop; 2) 8 streams / 1 stream; 2r) the same "
        "in raw llama.cpp; 3) neuron / llama_cpp.server; 4) last turn / turn 1. "
        "other load: CPU used outside the benchmark during the timed runs.[/dim]"
    )


def explain_batching(cfg: Config, many: dict[str, Any], raw: dict[str, Any]) -> None:
    """Line 2 in context: the neuron's decode phase against llama.cpp's own batched rate."""
    decode, ceiling = many["decode_phase_median"], statistics.median(raw["batched"])
    console.print(
        f"[dim]line 2: the neuron's {cfg.streams} streams decode at {decode:.1f} tok/s "
        f"once every prompt is in (first token to last), "
        f"{decode / ceiling:.0%} of raw llama.cpp batched ({ceiling:.1f} tok/s, line 2r); "
        f"the rest of the aggregate's wall time is prompt processing.[/dim]"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results as JSON to this path")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    args = parser.parse_args(argv)
    if args.json is None:
        parser.error("--json OUT is required")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers get stopped

    cfg = Config.make(args.quick)
    machine = machine_info()
    console.print(
        f"[bold]machine[/bold]: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['ram_gib']} GiB RAM, Python {machine['python']}, "
        f"load average {machine['loadavg_at_start']}"
    )
    started = time.time()
    log_dir = Path(tempfile.mkdtemp(prefix="neuron-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            neuron = run_neuron_phase(cfg, stack, log_dir)
            server = run_llama_server_phase(cfg, stack, log_dir)
    except BaseException:
        console.print(f"[red]failed; server logs kept in {log_dir}[/red]")
        raise
    shutil.rmtree(log_dir, ignore_errors=True)
    lines = [
        line_decode(neuron["single"]),
        line_batching(cfg, neuron["agg1"], neuron["agg8"]),
        line_batching_ceiling(cfg, neuron["ceiling"]),
        *([] if isinstance(server, str) else [line_vs_server(cfg, neuron["agg8"], server)]),
        *neuron["turns"],
    ]
    render(cfg, lines)
    if isinstance(server, str):
        console.print(f"[red]line 3 not measured: {server}[/red]")
    explain_batching(cfg, neuron["agg8"], neuron["ceiling"])
    report = {
        "machine": machine,
        "config": asdict(cfg),
        "model_source": MODEL_SOURCE,
        "started_unix": started,
        "duration_s": round(time.time() - started, 1),
        "lines": [{**asdict(line), "passed": line.passed} for line in lines],
    }
    if isinstance(server, str):
        report["line_3_not_measured"] = server
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"results: {args.json}  ({report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
