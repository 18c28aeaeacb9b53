"""What a virtual key costs a request: a virtual key with every limit set (rpm, tpm,
max_parallel, a budget) and its usage recorded, against a cortex.toml key, in the same
gateway and the same run, over the instant fast upstream (``_fast_upstream.py``), so
the difference is the gateway's own.

Requests alternate between the two keys, one at a time over a kept-alive connection
each, so a drift of the machine hits both alike. Printed: client-side latency p50/p90
and the gateway's own time (``x-cortex-overhead-ms``) p50 per key, their ratio and
difference. SQLite (the default database): rpm is counted in the process; with
``--database-url postgresql://...`` in the database, in leases (``gateway/counters.py``).

    .venv/bin/python bench/keys_overhead_bench.py [--requests 2000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _fast_upstream import MODEL_ID, MODEL_SOURCE, start_fast_upstream
from _procs import Server, free_port

ADMIN = "bench-admin-token"
STATIC = "sk-bench-static"
BODY = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def start_gateway(
    stack: contextlib.ExitStack, log_dir: Path, upstream: Server, database_url: str | None
) -> Server:
    port, metrics_port = free_port(), free_port()
    database = f'database_url = "{database_url}"\n' if database_url else ""
    config, models = log_dir / "cortex.toml", log_dir / "models.toml"
    config.write_text(
        f'[gateway]\napi_keys = ["{STATIC}"]\nadmin_token = "{ADMIN}"\n{database}\n'
        f'[[neurons]]\nname = "fast"\nendpoint = "{upstream.url}"\n'
    )
    models.write_text(f'[[models]]\nid = "{MODEL_ID}"\nsource = "{MODEL_SOURCE}"\n')
    argv = [str(Path(sys.executable).parent / "cortex"), "serve", "--config", str(config),
            "--models", str(models), "--listen", f"127.0.0.1:{port}",
            "--metrics-listen", f"127.0.0.1:{metrics_port}", "--log-format", "text"]  # fmt: skip
    server = Server("cortex", argv, port, log_dir, {"CORTEX_STATE_DIR": str(log_dir / "state")})
    stack.callback(server.stop)
    server.wait_until(lambda c: c.get("/health").status_code == 200, timeout_s=60)
    return server


def virtual_key(gateway: Server) -> str:
    limits = {"name": "bench", "models": ["bench-*"], "rpm": 10**9, "tpm": 10**12,
              "max_parallel": 1000, "budget_tokens": 10**15, "budget_period": "month"}  # fmt: skip
    made = httpx.post(
        gateway.url + "/admin/keys", json=limits, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    made.raise_for_status()
    return made.json()["key"]


def measure(gateway: Server, keys: dict[str, str], requests: int, warmup: int) -> dict:
    clients = {
        name: httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"})
        for name, key in keys.items()
    }
    seen: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in keys}
    for i in range(warmup + requests):
        for name, client in clients.items():
            started = time.perf_counter()
            answer = client.post("/v1/chat/completions", json=BODY)
            elapsed = time.perf_counter() - started
            if answer.status_code != 200:
                raise SystemExit(f"{name}: {answer.status_code} {answer.text}")
            if i >= warmup:
                seen[name][0].append(elapsed * 1000)
                seen[name][1].append(float(answer.headers["x-cortex-overhead-ms"]))
    for client in clients.values():
        client.close()
    return seen


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured, per key")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--database-url", help="postgresql://... (default: SQLite)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        upstream = start_fast_upstream(stack, log_dir)
        gateway = start_gateway(stack, log_dir, upstream, args.database_url)
        keys = {"static": STATIC, "virtual": virtual_key(gateway)}
        seen = measure(gateway, keys, args.requests, args.warmup)
    print(f"{args.requests} requests per key, alternating; database: "
          f"{'postgresql' if args.database_url else 'sqlite'}")  # fmt: skip
    print(f"{'key':8} {'p50 ms':>8} {'p90 ms':>8} {'own p50 ms':>11}")
    p50 = {}
    for name, (latency, own) in seen.items():
        p50[name] = (statistics.median(latency), statistics.median(own))
        print(f"{name:8} {p50[name][0]:8.3f} {quantile(latency, 0.9):8.3f} {p50[name][1]:11.3f}")
    (static_latency, static_own), (virtual_latency, virtual_own) = p50["static"], p50["virtual"]
    print(f"virtual / static p50 latency: {virtual_latency / static_latency:.3f} "
          f"(+{virtual_latency - static_latency:.3f} ms); the gateway's own time: "
          f"{virtual_own / static_own:.3f} (+{virtual_own - static_own:.3f} ms)")  # fmt: skip


if __name__ == "__main__":
    main()
