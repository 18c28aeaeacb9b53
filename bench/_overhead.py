"""The gateway benchmark's runs, and the figures drawn from them.

Fixed-rate runs go in rounds: each round runs every target of a rate plan in turn
(non-streaming, then streaming), so a drift in the machine's speed over the minutes of a
run hits every target alike. Latencies of all rounds are pooled per target; each round's
p50 is kept to show the spread. Then one closed-loop run per target for its max throughput.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import psutil
from _fast_upstream import ANSWER, MODEL_ID
from _load import ForeignLoad
from _procs import Server
from _traffic import ThroughputRun, chat_payload, closed_loop, fixed_rate, response_check, run

Kind = Literal["plain", "stream"]
KINDS: tuple[Kind, ...] = ("plain", "stream")
THROUGHPUT_WARMUP_S = 2.0


class TargetFailed(Exception):
    """A target answered too few requests to measure; the message says how it failed."""


@dataclass(frozen=True)
class RatePlan:
    """Fixed-rate runs at one rate, over some of the targets."""

    rate: float  # requests per second
    requests: int  # measured non-streaming requests per target, over all rounds
    stream_requests: int  # measured streaming requests per target, over all rounds
    targets: tuple[str, ...]

    def per_round(self, kind: Kind, rounds: int) -> int:
        total = self.requests if kind == "plain" else self.stream_requests
        return max(2, total // rounds)


@dataclass(frozen=True)
class Settings:
    plans: tuple[RatePlan, ...]
    rounds: int  # fixed-rate runs per plan, target and kind, alternating between targets
    warmup: int  # requests sent before each fixed-rate run, not measured
    concurrency: int  # clients of the closed-loop run
    seconds: float  # measured length of the closed-loop run
    quiet_wait_s: float  # how long to wait for the machine to go quiet before a round


@dataclass
class Target:
    name: str
    url: str
    servers: dict[str, Server]  # by role: "upstream", and "gateway" unless direct
    optional: bool = False  # a failure drops it from the run instead of ending the run


@dataclass
class Pooled:
    """One target's fixed-rate runs of one kind, pooled over the rounds."""

    load: ForeignLoad
    latencies_ns: list[int] = field(default_factory=list)
    round_p50_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    max_lag_ns: int = 0
    sent: int = 0  # warm-up included
    cpu_s: dict[str, float] = field(default_factory=dict)  # by role, warm-up included

    def percentiles_ms(self) -> dict[str, float]:
        cuts = statistics.quantiles(self.latencies_ns, n=100, method="inclusive")
        return {f"p{p}": cuts[p - 1] / 1e6 for p in (50, 90, 99)}


def _payload_and_check(kind: Kind) -> tuple[bytes, Callable[[bytes], bool]]:
    stream = kind == "stream"
    expected = b"help you today?" if stream else ANSWER.encode()  # streams split the answer
    return chat_payload(MODEL_ID, stream), response_check(stream, expected)


def _cpu_seconds(server: Server) -> float:
    total = 0.0
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(server.proc.pid)
        for one in (proc, *proc.children(recursive=True)):
            times = one.cpu_times()
            total += times.user + times.system
    return total


def own_pids(targets: list[Target]) -> list[int]:
    pids = {os.getpid()}
    for target in targets:
        for server in target.servers.values():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(server.proc.pid)
                pids.update(p.pid for p in (proc, *proc.children(recursive=True)))
    return sorted(pids)


def fixed_rate_rounds(
    cfg: Settings,
    plan: RatePlan,
    targets: list[Target],
    api_key: str,
    step: Callable[[str], None],
    dropped: Callable[[Target, str], None],
) -> dict[str, dict[Kind, Pooled]]:
    """The plan's runs, on those of ``targets`` it names; a failed optional one is dropped."""
    pids = own_pids(targets)
    chosen = [t for t in targets if t.name in plan.targets]
    pooled = {t.name: {k: Pooled(ForeignLoad(pids)) for k in KINDS} for t in chosen}
    for index in range(cfg.rounds):
        names = ", ".join(t.name for t in chosen)
        step(f"{plan.rate:g} requests/s, round {index + 1}/{cfg.rounds}: {names}")
        for kind in KINDS:
            for target in list(chosen):
                count = plan.per_round(kind, cfg.rounds)
                try:
                    _one_run(
                        cfg, plan.rate, count, target, kind, api_key, pooled[target.name][kind]
                    )
                except TargetFailed as exc:
                    if not target.optional:
                        raise
                    chosen.remove(target)
                    targets.remove(target)
                    pooled.pop(target.name)
                    dropped(target, str(exc))
    return pooled


def _one_run(
    cfg: Settings, rate: float, count: int, target: Target, kind: Kind, api_key: str, into: Pooled
) -> None:
    payload, check = _payload_and_check(kind)
    url = f"{target.url}/v1/chat/completions"
    before = {role: _cpu_seconds(server) for role, server in target.servers.items()}
    with into.load.measure():
        result = run(fixed_rate(url, api_key, payload, check, rate, count, cfg.warmup))
    for role, server in target.servers.items():
        into.cpu_s[role] = into.cpu_s.get(role, 0.0) + _cpu_seconds(server) - before[role]
    if len(result.latencies_ns) < count // 2:
        raise TargetFailed(
            f"{target.name}: {result.errors} of {count} requests failed: {result.error_examples}"
        )
    into.latencies_ns += result.latencies_ns
    into.round_p50_ms.append(statistics.median(result.latencies_ns) / 1e6)
    into.errors += result.errors
    into.error_examples = (into.error_examples + result.error_examples)[:5]
    into.max_lag_ns = max(into.max_lag_ns, result.max_lag_ns)
    into.sent += count + cfg.warmup


def max_throughput(
    cfg: Settings, targets: list[Target], api_key: str, step: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    payload, check = _payload_and_check("plain")
    for target in targets:
        step(f"{target.name}: {cfg.concurrency} clients, closed loop, {cfg.seconds:g} s")
        load = ForeignLoad(own_pids(targets))
        url = f"{target.url}/v1/chat/completions"
        with load.measure():
            result: ThroughputRun = run(
                closed_loop(
                    url, api_key, payload, check, cfg.concurrency, cfg.seconds, THROUGHPUT_WARMUP_S
                )
            )
        out[target.name] = {"run": result, "other_load": load.cores}
    return out


def summarize_rate(
    rate: float, fixed: dict[str, dict[Kind, Pooled]], throughput: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Percentiles, added latency and CPU per target at one rate."""
    out: dict[str, Any] = {}
    for target, kinds in fixed.items():
        rps = throughput[target]["run"].rate if target in throughput else None
        for kind, runs in kinds.items():
            cuts = runs.percentiles_ms()
            direct = fixed["direct"][kind]
            base = direct.percentiles_ms()
            out.setdefault(target, {})[kind] = {
                **cuts,
                "added_p50": cuts["p50"] - base["p50"],
                "added_p99": cuts["p99"] - base["p99"],
                "round_added_p50": [
                    mine - theirs
                    for mine, theirs in zip(runs.round_p50_ms, direct.round_p50_ms, strict=True)
                ],
                "samples": len(runs.latencies_ns),
                "errors": runs.errors,
                "error_examples": runs.error_examples,
                "max_lag_ms": runs.max_lag_ns / 1e6,
                "offered_load": rate / rps if rps else None,
                "cpu_us_per_request": {r: s / runs.sent * 1e6 for r, s in runs.cpu_s.items()},
                "other_load": runs.load.cores,
            }
    return out


def summarize_throughput(throughput: dict[str, dict[str, Any]]) -> dict[str, Any]:
    direct = throughput["direct"]["run"].rate
    return {
        target: {
            "rps": measured["run"].rate,
            "vs_direct": measured["run"].rate / direct,
            "completed": measured["run"].completed,
            "errors": measured["run"].errors,
            "error_examples": measured["run"].error_examples,
            "other_load": measured["other_load"],
        }
        for target, measured in throughput.items()
    }
