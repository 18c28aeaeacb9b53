"""The gateway benchmark's client: chat completions sent open-loop at a fixed rate, or
closed-loop as fast as they come back, timed with ``perf_counter_ns``.

One aiohttp session with keep-alive connections per run, on uvloop when it is installed,
in this process alone (the servers are other processes). A request's latency runs from
just before it is sent to the last byte of its response (the ``[DONE]`` frame of a stream).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

import aiohttp

ERRORS_KEPT = 5  # distinct examples of failures kept for the report


@dataclass
class Sample:
    """What a run's requests did: latencies of the good ones, a count and examples of the rest."""

    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)

    def fail(self, reason: str) -> None:
        self.errors += 1
        if len(self.error_examples) < ERRORS_KEPT and reason not in self.error_examples:
            self.error_examples.append(reason)


@dataclass
class FixedRateRun(Sample):
    rate: float = 0.0
    warmup: int = 0  # requests sent first and left out of the latencies
    max_lag_ns: int = 0  # how late the client sent a request against its schedule


@dataclass
class ThroughputRun(Sample):
    concurrency: int = 0
    seconds: float = 0.0
    completed: int = 0  # requests that finished inside the measured window

    @property
    def rate(self) -> float:
        return self.completed / self.seconds


def chat_payload(model: str, stream: bool) -> bytes:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
        "stream": stream,
    }
    return json.dumps(body).encode()


def response_check(stream: bool, expected: bytes) -> Callable[[bytes], bool]:
    """A cheap test that a body is the upstream's answer, passed on whole."""
    if stream:
        return lambda data: expected in data and data.rstrip().endswith(b"data: [DONE]")
    return lambda data: expected in data


def run(coroutine: Any) -> Any:
    """Run one measurement in a fresh event loop (uvloop's when installed)."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def _session(connections: int, api_key: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(total=30),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )


async def _request(
    session: aiohttp.ClientSession,
    url: str,
    payload: bytes,
    check: Callable[[bytes], bool],
    sample: Sample,
) -> tuple[int, int] | None:
    """Send one request; its (start, end) times, or None after recording why it failed."""
    started = perf_counter_ns()
    try:
        async with session.post(url, data=payload) as response:
            data = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        sample.fail(f"{exc.__class__.__name__}: {exc}")
        return None
    ended = perf_counter_ns()
    if status != 200 or not check(data):
        sample.fail(f"HTTP {status}: {data[:300].decode(errors='replace')}")
        return None
    return started, ended


async def fixed_rate(
    url: str,
    api_key: str,
    payload: bytes,
    check: Callable[[bytes], bool],
    rate: float,
    count: int,
    warmup: int,
) -> FixedRateRun:
    """Open loop: request i is sent at ``i / rate`` s whether or not earlier ones are back."""
    result = FixedRateRun(rate=rate, warmup=warmup)
    interval_ns = 1e9 / rate
    async with _session(0, api_key) as session:
        tasks = []
        start = perf_counter_ns()
        for i in range(warmup + count):
            due = start + int(i * interval_ns)
            wait_ns = due - perf_counter_ns()
            if wait_ns > 0:
                await asyncio.sleep(wait_ns / 1e9)
            if i >= warmup:
                result.max_lag_ns = max(result.max_lag_ns, perf_counter_ns() - due)
            sample = result if i >= warmup else Sample()
            tasks.append(asyncio.create_task(_request(session, url, payload, check, sample)))
        timings = await asyncio.gather(*tasks)
    result.latencies_ns = [end - begin for begin, end in filter(None, timings[warmup:])]
    return result


async def closed_loop(
    url: str,
    api_key: str,
    payload: bytes,
    check: Callable[[bytes], bool],
    concurrency: int,
    seconds: float,
    warmup_s: float,
) -> ThroughputRun:
    """``concurrency`` clients, each sending its next request when the last one is back.

    Counts the requests that finish in the ``seconds`` after a ``warmup_s`` warm-up.
    """
    result = ThroughputRun(concurrency=concurrency, seconds=seconds)
    window_start = perf_counter_ns() + int(warmup_s * 1e9)
    window_end = window_start + int(seconds * 1e9)

    async def client(session: aiohttp.ClientSession) -> None:
        while perf_counter_ns() < window_end:
            timing = await _request(session, url, payload, check, result)
            if timing is not None and window_start <= timing[1] <= window_end:
                result.completed += 1

    async with _session(concurrency, api_key) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return result
