"""A real Prometheus server scrapes the gateway and a neuron; PromQL sees our requests.

Debian's ``prometheus`` (``scripts/debian-tools.sh`` installs it; the test skips
where it is missing) runs with a one-second scrape interval and a config built
the way ``deploy/prometheus.yml`` is, against a gateway and neuron of their own.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from procs import BUNDLED, MODEL, Gateway, Neuron, Process, free_port, gateway_config

pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def query(url: str, promql: str) -> float | None:
    answer = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=5).json()
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_gateway_and_neuron(tmp_path: Path) -> None:
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus is not installed: scripts/debian-tools.sh installs it")
    node = Neuron(tmp_path, "p1", [f"{MODEL}={BUNDLED}"])
    gateway = Gateway(tmp_path, gateway_config(node), None, {MODEL})
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: cortex
    static_configs:
      - targets: ["127.0.0.1:{gateway.metrics_port}"]
  - job_name: neuron
    static_configs:
      - targets: ["127.0.0.1:{node.port}"]
"""
    )
    prometheus = Process(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        prometheus.wait_until(
            lambda: httpx.get(url + "/-/ready", timeout=2).status_code == 200, "prometheus"
        )
        for _ in range(3):
            answer = httpx.post(
                gateway.url + "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                      "max_tokens": 4},
                timeout=30,
            )  # fmt: skip
            assert answer.status_code == 200
        expected = {
            f'sum(cortex_requests_total{{model="{MODEL}",status="200"}})': 3,
            f'sum(neuron_requests_total{{model="{MODEL}"}})': 3,
            'up{job="cortex"}': 1,
            'up{job="neuron"}': 1,
        }
        deadline = time.monotonic() + 30
        seen: dict[str, float | None] = {}
        while time.monotonic() < deadline:
            seen = {promql: query(url, promql) for promql in expected}
            if seen == expected:
                break
            time.sleep(0.5)
        assert seen == expected, prometheus.log_tail()
    finally:
        prometheus.stop()
        gateway.stop()
        node.stop()
