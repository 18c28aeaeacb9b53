"""Aggregate throughput of a busy model with a second copy (``max_replicas = 2``) against
one copy (``max_replicas = 1``), in one run.

Two neurons pinned to one core each (``taskset -c 0`` / ``taskset -c 1``: a neuron sizes
its threads from its CPU affinity) stand in for two hosts; one gateway (poll interval
0.5 s) serves the bundled SmolLM2-135M under two ids from one models.toml:

- ``one``: ``max_replicas = 1`` (the baseline: one copy, as before replicas);
- ``two``: ``max_replicas = 2``, ``scale_up_after_s`` (default 5), ``scale_down_after_s``
  (default 5).

Each phase empties both neurons, warms the model with one request (a cold load onto one
node), then runs 16 concurrent clients for ``--seconds``, each sending requests one after
another (a long essay prompt, greedy, ``max_tokens`` 64). With one copy (``max_batch``
4), 12 of the 16 wait in the gateway's queue: deep, so ``two`` gets a second copy.

Printed: aggregate completion tok/s for both phases and their ratio (target, issue 18:
>= 1.6x); for ``two``, how long after the burst began the second copy was serving (its
first request in flight there), against ``scale_up_after_s`` + its load time; and how
long after the burst the copy was retired, against ``scale_down_after_s`` + one poll.
The load average before each phase says how quiet the machine was.

Usage: ``.venv/bin/python bench/replicas_bench.py [--seconds 60] [--streams 16]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _config import MODEL_SOURCE
from _procs import Server, free_port

PROMPT = "Write a long, detailed essay about the history of rivers and the cities on them."
MAX_TOKENS = 64


@dataclass
class Phase:
    model: str
    tokens: int = 0
    requests: int = 0
    seconds: float = 0.0
    by_node: dict[str, int] = field(default_factory=dict)
    second_serving_s: float | None = None  # after the burst began
    retired_after_s: float | None = None  # after the burst ended
    load_s: float | None = None  # the second copy's load, from the gateway's log
    load_avg: float = 0.0

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def start_neuron(stack: contextlib.ExitStack, log_dir: Path, name: str, core: int) -> Server:
    port = free_port()
    argv = ["taskset", "-c", str(core), str(Path(sys.executable).parent / "neuron"), "serve"]
    argv += ["--name", name, "--listen", f"127.0.0.1:{port}"]
    server = Server(f"neuron-{name}", argv, port, log_dir)
    stack.callback(server.stop)
    server.wait_until(lambda c: c.get("/status").status_code == 200)
    return server


def start_gateway(
    stack: contextlib.ExitStack, log_dir: Path, neurons: dict[str, Server], args: argparse.Namespace
) -> Server:
    port, metrics_port = free_port(), free_port()
    config = log_dir / "cortex.toml"
    text = "[gateway]\npoll_interval_s = 0.5\n"
    for name, neuron in neurons.items():
        text += f'\n[[neurons]]\nname = "{name}"\nendpoint = "{neuron.url}"\n'
    config.write_text(text)
    models = log_dir / "models.toml"
    models.write_text(
        f'[[models]]\nid = "one"\nsource = "{MODEL_SOURCE}"\nmax_replicas = 1\n\n'
        f'[[models]]\nid = "two"\nsource = "{MODEL_SOURCE}"\nmax_replicas = 2\n'
        f"scale_up_after_s = {args.scale_up_after}\nscale_down_after_s = {args.scale_down_after}\n"
    )
    argv = [str(Path(sys.executable).parent / "cortex"), "serve", "--config", str(config)]
    argv += ["--models", str(models), "--listen", f"127.0.0.1:{port}"]
    argv += ["--metrics-listen", f"127.0.0.1:{metrics_port}", "--log-format", "text"]
    server = Server("cortex", argv, port, log_dir)
    stack.callback(server.stop)
    server.wait_until(
        lambda c: sum(n["up"] for n in c.get("/fleet").json()["nodes"]) == len(neurons)
    )
    return server


def copies(client: httpx.Client, model: str) -> list[str]:
    fleet = client.get("/fleet").json()
    return [n["name"] for n in fleet["nodes"] if any(
        m["id"] == model and m["state"] == "ready" for m in n["models"])]  # fmt: skip


def in_flight(client: httpx.Client, model: str, node: str) -> int:
    fleet = client.get("/fleet").json()
    entry = next(n for n in fleet["nodes"] if n["name"] == node)
    return sum(m["in_flight"] for m in entry["models"] if m["id"] == model)


def empty(neurons: dict[str, Server]) -> None:
    for neuron in neurons.values():
        for model in httpx.get(neuron.url + "/status", timeout=10).json()["models"]:
            httpx.post(neuron.url + "/models/unload", json={"id": model["id"]}, timeout=60)


def ask(client: httpx.Client, model: str) -> tuple[str, int]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
    }
    response = client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return response.headers["x-cortex-node"], response.json()["usage"]["completion_tokens"]


def run_phase(
    gateway: Server, neurons: dict[str, Server], model: str, args: argparse.Namespace
) -> Phase:
    empty(neurons)
    time.sleep(1.5)  # the gateway's next polls see them empty
    phase = Phase(model, load_avg=os.getloadavg()[0])
    lock = threading.Lock()
    with httpx.Client(base_url=gateway.url, timeout=600) as client:
        first, _ = ask(client, model)  # the cold load, outside the measurement
        other = next(name for name in neurons if name != first)
        began = time.monotonic()
        until = began + args.seconds
        last_end = began

        def stream(_: int) -> None:
            nonlocal last_end
            while time.monotonic() < until:
                node, tokens = ask(client, model)
                with lock:
                    phase.tokens += tokens
                    phase.requests += 1
                    phase.by_node[node] = phase.by_node.get(node, 0) + tokens
                    last_end = max(last_end, time.monotonic())

        with ThreadPoolExecutor(args.streams) as pool:
            futures = [pool.submit(stream, i) for i in range(args.streams)]
            while not all(f.done() for f in futures):
                if phase.second_serving_s is None and in_flight(client, model, other) > 0:
                    phase.second_serving_s = time.monotonic() - began
                time.sleep(0.2)
            for future in futures:
                future.result()
        phase.seconds = last_end - began
        if model == "two":
            ended = time.monotonic()
            deadline = ended + args.scale_down_after + 60
            while len(copies(client, model)) > 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            if len(copies(client, model)) <= 1:
                phase.retired_after_s = time.monotonic() - ended
    found = re.search(
        rf"loaded model={model} node={other} .*? seconds=([\d.]+)", gateway.log_path.read_text()
    )
    phase.load_s = float(found.group(1)) if found else None
    return phase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--scale-up-after", type=float, default=5)
    parser.add_argument("--scale-down-after", type=float, default=5)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="replicas-")))
        neurons = {name: start_neuron(stack, log_dir, name, core) for core, name in
                   enumerate(("a", "b"))}  # fmt: skip
        gateway = start_gateway(stack, log_dir, neurons, args)
        print(
            f"2 neurons (a on core 0, b on core 1), {args.streams} streams, "
            f"{args.seconds:.0f} s a phase, max_tokens {MAX_TOKENS}, logs in {log_dir}"
        )
        one = run_phase(gateway, neurons, "one", args)
        two = run_phase(gateway, neurons, "two", args)
        for phase in (one, two):
            nodes = ", ".join(f"{n}: {t}" for n, t in sorted(phase.by_node.items()))
            print(
                f"max_replicas={1 if phase.model == 'one' else 2}: {phase.tokens} tokens in "
                f"{phase.seconds:.1f} s = {phase.rate:.1f} tok/s ({phase.requests} requests; "
                f"tokens by node {nodes}; load average before {phase.load_avg:.2f})"
            )
        ratio = two.rate / one.rate if one.rate else 0.0
        verdict = "pass" if ratio >= 1.6 else "FAIL"
        print(f"ratio: {ratio:.2f}x (target >= 1.6x: {verdict})")
        serving = f"{two.second_serving_s:.1f} s" if two.second_serving_s is not None else "never"
        load = f"{two.load_s:.2f} s" if two.load_s is not None else "?"
        print(
            f"second copy serving {serving} after the burst began "
            f"(scale_up_after_s {args.scale_up_after:g} + its load {load} + up to 1 s round)"
        )
        retired = f"{two.retired_after_s:.1f} s" if two.retired_after_s is not None else "not"
        print(
            f"second copy retired {retired} after the burst ended "
            f"(scale_down_after_s {args.scale_down_after:g} + one poll 0.5 s + 1 s round)"
        )


if __name__ == "__main__":
    main()
