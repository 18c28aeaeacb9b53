"""A real Prometheus server, run with the shipped ``deploy/prometheus/prometheus.yml``,
scrapes a gateway and a neuron; PromQL sees our requests.

Debian's ``prometheus`` and ``promtool`` (``scripts/debian-tools.sh`` installs them;
the test skips where they are missing, and fails under CI) read the file as shipped,
with only its two target addresses pointed at this test's gateway and neuron, so a
mistake in the file (a job, a path, a label, the YAML itself) fails here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

import required
from procs import BUNDLED, MODEL, Gateway, Neuron, Process, free_port, gateway_config, wait_for

pytestmark = pytest.mark.slow

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.yml"
GATEWAY_TARGET = "127.0.0.1:31314"  # the shipped defaults: [gateway] metrics_listen
NEURON_TARGET = "127.0.0.1:13131"  # and neuron serve's default --listen


def tool(name: str) -> str:
    found = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(found).exists():
        required.missing(f"{name} is not installed: scripts/debian-tools.sh installs it")
    return found


def query(url: str, promql: str) -> float | None:
    answer = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=5).json()
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_the_shipped_config_is_valid() -> None:
    checked = subprocess.run(
        [tool("promtool"), "check", "config", str(SHIPPED)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.timeout(400)
def test_prometheus_scrapes_gateway_and_neuron_with_the_shipped_config(tmp_path: Path) -> None:
    prometheus_bin = tool("prometheus")
    shipped = SHIPPED.read_text()
    # each default address once, so the rewrite below is exactly a change of targets
    assert shipped.count(GATEWAY_TARGET) == 1 and shipped.count(NEURON_TARGET) == 1
    node = Neuron(tmp_path, "p1", [f"{MODEL}={BUNDLED}"])
    gateway = Gateway(tmp_path, gateway_config(node), None, {MODEL})
    config = tmp_path / "prometheus.yml"
    config.write_text(
        shipped.replace(GATEWAY_TARGET, f"127.0.0.1:{gateway.metrics_port}").replace(
            NEURON_TARGET, f"127.0.0.1:{node.port}"
        )
    )
    port = free_port()
    prometheus = Process(
        [
            prometheus_bin,
            f"--config.file={config}",
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
        # the job names and the node label are the shipped file's
        expected = {
            f'sum(cortex_requests_total{{job="cortex-gateway",model="{MODEL}",status="200"}})': 3,
            f'sum(neuron_requests_total{{job="cortex-neurons",model="{MODEL}"}})': 3,
            'up{job="cortex-gateway"}': 1,
            'up{job="cortex-neurons",node="local"}': 1,
        }
        seen: dict[str, float | None] = {}

        def scraped() -> bool:
            seen.update({promql: query(url, promql) for promql in expected})
            return seen == expected

        # the shipped scrape_interval is 15 s: two scrapes after the requests at most
        try:
            wait_for(scraped, "the scrapes to show the requests", timeout_s=120, interval_s=0.5)
        except AssertionError:
            raise AssertionError(f"{seen}\n{prometheus.log_tail()}") from None
    finally:
        prometheus.stop()
        gateway.stop()
        node.stop()
