"""Replicas over two real neurons and one real gateway: ``min_replicas`` keeps copies
warm without a request; ``max_replicas`` adds a copy under a deep queue and retires it
once idle. What is asserted is what ``/fleet`` shows (copies, last decision)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from procs import (
    BUNDLED,
    UNENDING,
    Gateway,
    Neuron,
    gateway_config,
    metric,
    toml_table,
    wait_for,
)

pytestmark = pytest.mark.slow

SMALL = {"context_length": 512, "max_batch": 1}


def models_toml(model_id: str, **fields: object) -> str:
    return toml_table("models", {"id": model_id, "source": BUNDLED, **SMALL, **fields})


@pytest.fixture(scope="module")
def neurons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Neuron]]:
    tmp = tmp_path_factory.mktemp("replicas")
    started = [Neuron(tmp, name) for name in ("n1", "n2")]
    yield started
    for neuron in started:
        neuron.stop()


def fleet_model(gateway: Gateway, model_id: str) -> dict:
    fleet = httpx.get(gateway.url + "/fleet", timeout=5).json()
    return next(m for m in fleet["models"] if m["id"] == model_id)


def copies(gateway: Gateway, model_id: str) -> list[str]:
    return sorted(fleet_model(gateway, model_id)["replicas"]["copies"])


def test_min_replicas_keeps_two_copies_warm_without_a_request(
    neurons: list[Neuron], tmp_path: Path
) -> None:
    gateway = Gateway(tmp_path, gateway_config(*neurons), models_toml("warm", min_replicas=2))
    try:
        wait_for(lambda: copies(gateway, "warm") == ["n1", "n2"], "two copies of warm")
        replicas = fleet_model(gateway, "warm")["replicas"]
        assert (replicas["min_replicas"], replicas["max_replicas"]) == (2, 2)
        assert replicas["last_decision"]["action"] == "add"
        assert "min_replicas=2" in replicas["last_decision"]["reason"]
        assert metric(f"http://127.0.0.1:{gateway.metrics_port}/metrics",
                      "cortex_model_replicas", model="warm") == 2  # fmt: skip
    finally:
        gateway.stop()
        for neuron in neurons:
            httpx.post(neuron.url + "/models/unload", json={"id": "warm"}, timeout=30)


def test_a_deep_queue_adds_a_copy_that_is_retired_once_idle(
    neurons: list[Neuron], tmp_path: Path
) -> None:
    model = models_toml(
        "busy", max_replicas=2, scale_up_after_s=1, scale_down_after_s=3, max_batch=1
    )
    gateway = Gateway(tmp_path, gateway_config(*neurons), model)
    client = httpx.Client(base_url=gateway.url, timeout=300)

    def long_request(_: int) -> int:
        body = {
            "model": "busy",
            "messages": [{"role": "user", "content": "Tell a story."}],
            "max_tokens": 128,
            **UNENDING,
        }
        return client.post("/v1/chat/completions", json=body).status_code

    try:
        with ThreadPoolExecutor(6) as pool:
            answers = pool.map(long_request, range(6))
            wait_for(lambda: copies(gateway, "busy") == ["n1", "n2"], "a second copy", 120)
            added = fleet_model(gateway, "busy")["replicas"]["last_decision"]
            assert added["action"] == "add" and "waiting" in added["reason"]
            assert list(answers) == [200] * 6
        wait_for(lambda: len(copies(gateway, "busy")) == 1, "the copy retired", 60)
        retired = fleet_model(gateway, "busy")["replicas"]["last_decision"]
        assert retired["action"] == "retire" and "idle" in retired["reason"]
        log = gateway.log_path.read_text()
        assert "replica model=busy" in log and "action=add" in log and "action=retire" in log
    finally:
        client.close()
        gateway.stop()
        for neuron in neurons:
            httpx.post(neuron.url + "/models/unload", json={"id": "busy"}, timeout=30)
