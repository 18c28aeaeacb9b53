"""Gateway overhead: cortex's gateway and LiteLLM's proxy against calling the upstream directly.

One run, one command. Everything runs on this machine as separate processes on free
loopback ports, started here and stopped at the end, also on error:

- the upstream, a stand-in neuron that answers instantly (``_fast_upstream.py``: aiohttp,
  a fixed chat.completion or a fixed 6-frame SSE stream);
- ``cortex serve`` with that upstream as its one neuron;
- LiteLLM's proxy (``litellm[proxy]``, pinned, in ``bench/.venv-litellm``, made on the
  first run) routing ``bench-model`` to the same upstream; its settings: ``_gateways.py``;
- the client, this process: aiohttp with keep-alive connections, on uvloop.

Both gateways check the same API key on every request. Measured, per target (the upstream
called directly, through cortex, through LiteLLM):

1. Latency at a fixed rate, open loop (request i is sent at i / rate, whether or not the
   earlier ones are back), non-streaming chat completions and streaming ones (time to the
   last byte, ``data: [DONE]``), in rounds that alternate between the targets; each run
   starts with 10 unmeasured warm-up requests. Reported: p50, p90, p99, and the latency a
   gateway *adds*: its p50 minus the direct p50 (same for p99; a difference of
   percentiles, not a percentile of differences). Two rates:
   - ``--rate`` (100/s): direct and cortex, 2000 + 1000 streaming requests each;
   - ``--compare-rate`` (20/s): direct, cortex and LiteLLM, 400 + 200 each. LiteLLM's
     proxy tops out at ~50 requests/s on this 2-core machine: at 100/s its queue grows for
     the whole run, and its "added latency" would only be that queue's length.
2. Max throughput, closed loop: C clients, each sending its next non-streaming request
   when the last one is back, for T seconds after a 2 s warm-up.

Targets (issue): cortex's added p50 (non-streaming) <= 1 ms at ``--rate``, and <= 1/5 of
LiteLLM's at ``--compare-rate``.

Nothing is pinned: the client, the upstream and the gateway share the machine's cores, so
a gateway's latency includes waiting for one, and max throughput is that of the three
processes together. In the tables, "load" is the rate over the target's max throughput;
"gateway CPU", the CPU time of the gateway's processes per request (warm-up included);
"other load", the CPU (in cores) that processes outside the benchmark used meanwhile: well
above 0 means the figures are perturbed. A default run takes about 4 minutes (plus a few
the first time, to make LiteLLM's virtualenv).

Usage: ``.venv/bin/python bench/gateway_bench.py [--quick] [--skip-litellm] [--json OUT]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _fast_upstream import start_fast_upstream
from _gateways import (
    LITELLM_VERSION,
    GatewayUnavailable,
    cortex_source,
    ensure_litellm,
    start_cortex,
    start_litellm,
)
from _load import machine_info, wait_for_quiet
from _overhead import (
    RatePlan,
    Settings,
    Target,
    fixed_rate_rounds,
    max_throughput,
    summarize_rate,
    summarize_throughput,
)
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 132)
RESULTS = Path(__file__).resolve().parent / "results"
TARGET_ADDED_P50_MS = 1.0
TARGET_VS_LITELLM = 0.2


def run_all(cfg: Settings, litellm_wanted: bool, log_dir: Path) -> dict[str, Any]:
    missing: list[str] = []
    litellm = None
    if not litellm_wanted:
        missing.append("skipped (--skip-litellm)")
    else:
        try:
            litellm = ensure_litellm(log_dir, say=console.print)  # before anything is timed
        except GatewayUnavailable as exc:
            missing.append(str(exc))
    key = "sk-bench-" + secrets.token_hex(24)  # LiteLLM wants master keys to start with sk-

    def dropped(target: Target, why: str) -> None:
        missing.append(why)
        console.print(f"[yellow]{target.name} dropped from the run: {why}[/yellow]")

    def step(title: str) -> None:
        load = wait_for_quiet(cfg.quiet_wait_s)
        console.print(f"[dim]· {title} (other load at start: {load:.2f} cores)[/dim]")

    with contextlib.ExitStack() as stack:
        upstream = start_fast_upstream(stack, log_dir)
        cortex = start_cortex(stack, log_dir, upstream, key)
        targets = [
            Target("direct", upstream.url, {"upstream": upstream}),
            Target("cortex", cortex.url, {"upstream": upstream, "gateway": cortex}),
        ]
        if litellm is not None:
            try:
                proxy = start_litellm(stack, log_dir, upstream, key, litellm)
                servers = {"upstream": upstream, "gateway": proxy}
                targets.append(Target("litellm", proxy.url, servers, optional=True))
            except GatewayUnavailable as exc:
                missing.append(str(exc))
        if missing:
            console.print(f"[yellow]LiteLLM not measured: {missing[0]}[/yellow]")
        fixed = {}
        for index, plan in enumerate(cfg.plans):
            if index > 0 and not any(t.name == "litellm" for t in targets):
                continue  # the comparison rate is there for LiteLLM only
            fixed[plan.rate] = fixed_rate_rounds(cfg, plan, targets, key, step, dropped)
        throughput = max_throughput(cfg, targets, key, step)
    return {"fixed": fixed, "throughput": throughput, "litellm_missing": missing}


# -- report ---------------------------------------------------------------------------


def verdicts(cfg: Settings, rates: dict[float, Any]) -> list[dict[str, Any]]:
    main_rate = cfg.plans[0].rate
    compare = [plan.rate for plan in cfg.plans if "litellm" in plan.targets]
    added = rates[main_rate]["cortex"]["plain"]["added_p50"]
    lines = [
        {
            "name": f"cortex added p50, non-streaming, {main_rate:g} requests/s",
            "value": f"{added:.3f} ms",
            "target": f"<= {TARGET_ADDED_P50_MS:g} ms",
            "passed": added <= TARGET_ADDED_P50_MS,
        }
    ]
    name = "cortex / LiteLLM added p50, non-streaming"
    target = f"<= {TARGET_VS_LITELLM:g}"
    if not compare or "litellm" not in rates.get(compare[0], {}):
        return [*lines, {"name": name, "value": "not measured", "target": target, "passed": None}]
    compare_rate = compare[0]
    name += f", {compare_rate:g} requests/s"
    ours = rates[compare_rate]["cortex"]["plain"]["added_p50"]
    theirs = rates[compare_rate]["litellm"]["plain"]["added_p50"]
    ratio = ours / theirs if theirs > 0 else float("inf")
    value = f"{ratio:.3f} ({ours:.3f} ms / {theirs:.3f} ms)"
    passed = ratio <= TARGET_VS_LITELLM
    return [*lines, {"name": name, "value": value, "target": target, "passed": passed}]


def render_rate(rate: float, summary: dict[str, Any]) -> None:
    table = Table(title=f"latency at {rate:g} requests/s, open loop (ms)")
    for column in ("target", "request", "n", "p50", "p90", "p99", "added p50", "added p99"):
        table.add_column(column, justify="left" if column in ("target", "request") else "right")
    for column in ("load", "gateway CPU", "errors", "other load"):
        table.add_column(column, justify="right")
    for kind in ("plain", "stream"):
        for target, figures in summary.items():
            f = figures[kind]
            direct = target == "direct"
            cpu = f["cpu_us_per_request"].get("gateway")
            table.add_row(
                target,
                "non-stream" if kind == "plain" else "stream",
                str(f["samples"]),
                f"{f['p50']:.3f}",
                f"{f['p90']:.3f}",
                f"{f['p99']:.3f}",
                "" if direct else f"{f['added_p50']:+.3f}",
                "" if direct else f"{f['added_p99']:+.3f}",
                "" if f["offered_load"] is None else f"{f['offered_load']:.0%}",
                "" if cpu is None else f"{cpu:.0f} µs/req",
                str(f["errors"]),
                f"{f['other_load']:.2f} cores",
            )
    console.print(table)
    for target, figures in summary.items():
        if target != "direct":
            rounds = ", ".join(f"{x:+.3f}" for x in figures["plain"]["round_added_p50"])
            console.print(f"[dim]{target} added p50 per round, non-streaming: {rounds} ms[/dim]")


def render(cfg: Settings, summary: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    for rate, figures in summary["rates"].items():
        render_rate(rate, figures)
    table = Table(title=f"max throughput, {cfg.concurrency} clients, {cfg.seconds:g} s")
    for column in ("target", "requests/s", "vs direct", "errors", "other load"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for target, f in summary["throughput"].items():
        table.add_row(
            target,
            f"{f['rps']:.0f}",
            f"{f['vs_direct']:.3f}",
            str(f["errors"]),
            f"{f['other_load']:.2f} cores",
        )
    console.print(table)
    console.print(
        "[dim]streaming: time to the last byte. load: the rate over the target's max "
        "throughput. gateway CPU: per request, warm-up included. other load: CPU used "
        "outside the benchmark meanwhile.[/dim]"
    )
    verdict = {True: "[green]pass[/green]", False: "[red]MISS[/red]", None: "[dim]—[/dim]"}
    for line in lines:
        console.print(
            f"{line['name']}: {line['value']} (target {line['target']}) {verdict[line['passed']]}"
        )


def raw_runs(result: dict[str, Any]) -> dict[str, Any]:
    """Every latency (µs, rounds in order) and every closed-loop count, for the JSON."""
    raw: dict[str, Any] = {"fixed": {}, "throughput": {}}
    for rate, targets in result["fixed"].items():
        for target, kinds in targets.items():
            for kind, pooled in kinds.items():
                raw["fixed"].setdefault(f"{rate:g}", {}).setdefault(target, {})[kind] = {
                    "latencies_us": [ns // 1000 for ns in pooled.latencies_ns],
                    "round_p50_ms": pooled.round_p50_ms,
                }
    for target, measured in result["throughput"].items():
        fields = asdict(measured["run"])
        fields.pop("latencies_ns")
        raw["throughput"][target] = fields
    return raw


def settings(args: argparse.Namespace) -> Settings:
    quick = args.quick
    together = not args.skip_litellm and args.compare_rate == args.rate  # one plan for all
    plans = [
        RatePlan(
            rate=args.rate,
            requests=200 if quick else args.requests,
            stream_requests=100 if quick else args.stream_requests,
            targets=("direct", "cortex", "litellm") if together else ("direct", "cortex"),
        )
    ]
    if not args.skip_litellm and not together:
        plans.append(
            RatePlan(
                rate=args.compare_rate,
                requests=100 if quick else args.compare_requests,
                stream_requests=50 if quick else args.compare_stream_requests,
                targets=("direct", "cortex", "litellm"),
            )
        )
    return Settings(
        plans=tuple(plans),
        rounds=2 if quick else args.rounds,
        warmup=10,
        concurrency=args.concurrency,
        seconds=3 if quick else args.seconds,
        quiet_wait_s=0 if quick else 10,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--rate", type=float, default=100, help="requests/s, direct and cortex")
    add("--requests", type=int, default=2000, help="non-streaming, per target, at --rate")
    add("--stream-requests", type=int, default=1000, help="streaming, per target, at --rate")
    add("--compare-rate", type=float, default=20, help="requests/s, with LiteLLM too")
    add("--compare-requests", type=int, default=400, help="non-streaming, at --compare-rate")
    add("--compare-stream-requests", type=int, default=200, help="streaming, at --compare-rate")
    add("--rounds", type=int, default=4, help="fixed-rate rounds, alternating the targets")
    add("--concurrency", type=int, default=32, help="clients of the closed-loop run")
    add("--seconds", type=float, default=6, help="measured time of the closed-loop run")
    add("--quick", action="store_true", help="short smoke run")
    add("--skip-litellm", action="store_true", help="measure direct and cortex only")
    add("--json", type=Path, help="raw results (default: bench/results/gateway-<time>.json)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers get stopped
    cfg = settings(args)
    machine = machine_info()
    console.print(
        f"[bold]machine[/bold]: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['ram_gib']} GiB RAM, Python {machine['python']}, "
        f"load average {machine['loadavg_at_start']}"
    )
    source = cortex_source()
    console.print(
        f"[bold]cortex[/bold]: commit {source['commit'][:12]}, src modified: "
        f"{source['src_modified']}, src digest {source['src_sha256']}"
    )
    started = time.time()
    log_dir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    try:
        result = run_all(cfg, not args.skip_litellm, log_dir)
    except BaseException:
        console.print(f"[red]failed; server logs kept in {log_dir}[/red]")
        raise
    shutil.rmtree(log_dir, ignore_errors=True)
    summary = {
        "rates": {
            rate: summarize_rate(rate, fixed, result["throughput"])
            for rate, fixed in result["fixed"].items()
        },
        "throughput": summarize_throughput(result["throughput"]),
    }
    lines = verdicts(cfg, summary["rates"])
    render(cfg, summary, lines)
    report = {
        "machine": machine,
        "cortex_source": source,
        "settings": asdict(cfg),
        "litellm_version": LITELLM_VERSION,
        "litellm_missing": result["litellm_missing"],
        "started_unix": started,
        "duration_s": round(time.time() - started, 1),
        "summary": {**summary, "rates": {f"{r:g}": f for r, f in summary["rates"].items()}},
        "verdicts": lines,
        "raw": raw_runs(result),
    }
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    path = args.json or RESULTS / f"gateway-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"results: {path}  ({report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
