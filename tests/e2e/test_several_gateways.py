"""Several gateways over one fleet (issue 17 §5): two real `cortex serve` processes with
the same config and one PostgreSQL, over two real neurons serving the bundled model.

The neurons are ``small`` (room for one copy of the bundled model at a small context,
not two) and ``big`` (room for three). What is checked is what the neurons themselves
count (``neuron_model_loads_total``), not what either gateway believes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from cortex.neuron.files.estimate import estimate_memory
from cortex.neuron.files.sources import parse_source, resolve_local
from cortex.spec import ModelSpec
from procs import BUNDLED, Gateway, Neuron, metric, wait_for

pytestmark = pytest.mark.slow

SMALL = {"context_length": 512, "max_batch": 1}
HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def small_mb() -> int:
    path = resolve_local(parse_source(BUNDLED), None)
    return estimate_memory(path, ModelSpec(id="x", source=BUNDLED, **SMALL)).total_mb


@pytest.fixture(scope="module")
def neurons(tmp_path_factory: pytest.TempPathFactory, small_mb: int) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("two-gateways")
    budgets = {"small": int(small_mb * 1.5), "big": int(small_mb * 3.5)}
    started = {
        name: Neuron(tmp, name, extra=["--memory-budget-mb", str(mb)])
        for name, mb in budgets.items()
    }
    yield started
    for neuron in started.values():
        neuron.stop()


def profiles(*ids: str) -> str:
    fields = "".join(f"{key} = {value}\n" for key, value in SMALL.items())
    return "".join(f'[[models]]\nid = "{i}"\nsource = "{BUNDLED}"\n{fields}\n' for i in ids)


@pytest.fixture
def two_gateways(
    neurons: dict, postgres: str, tmp_path: Path
) -> Iterator[Callable[[str], tuple[Gateway, Gateway]]]:
    """Starts two gateways with one config (one PostgreSQL database between them) over
    the neurons, each emptied first; stops them afterwards."""
    from postgres import new_database

    for neuron in neurons.values():
        for model in neuron.status()["models"]:
            httpx.post(neuron.url + "/models/unload", json={"id": model["id"]}, timeout=30)
    started: list[Gateway] = []

    def start(models: str) -> tuple[Gateway, Gateway]:
        config = f'[gateway]\npoll_interval_s = 0.5\ndatabase_url = "{new_database(postgres)}"\n'
        for name, neuron in neurons.items():
            config += f'\n[[neurons]]\nname = "{name}"\nendpoint = "{neuron.url}"\n'
        for label in ("g1", "g2"):
            folder = tmp_path / label
            folder.mkdir()
            started.append(Gateway(folder, config, models))
        return started[0], started[1]

    yield start
    for gateway in started:
        gateway.stop()


def ask(gateway: Gateway, model: str) -> str:
    """One short chat completion through ``gateway``; the node that served it."""
    reply = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": model, "messages": HI, "max_tokens": 4},
        timeout=300,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] is not None
    return reply.headers["x-cortex-node"]


def neuron_loads(neuron: Neuron, model: str, result: str = "ok") -> float:
    return metric(neuron.url + "/metrics", "neuron_model_loads_total", model=model, result=result)


def placed(neurons: dict) -> dict[str, set[str]]:
    return {name: {m["id"] for m in n.status()["models"]} for name, n in neurons.items()}


def test_two_gateways_never_overcommit_a_node_that_fits_one_model(two_gateways, neurons) -> None:
    g1, g2 = two_gateways(profiles("a", "b"))
    # both gateways see two empty nodes; the tighter fit, ``small``, for either model
    with ThreadPoolExecutor(2) as pool:
        served = list(pool.map(lambda job: ask(*job), [(g1, "a"), (g2, "b")]))
    small = neurons["small"]
    # the small node ran one load, ever: it never held both (a second load there was
    # either not tried, the other gateway having seen the first, or refused by it)
    assert neuron_loads(small, "a") + neuron_loads(small, "b") == 1
    device = small.status()["devices"][0]
    assert device["memory_used_by_models_mb"] <= device["memory_budget_mb"]
    # and the client whose model did not fit there was served from the other node
    assert sorted(served) == ["big", "small"]
    by_node = dict(zip(served, ("a", "b"), strict=True))
    assert placed(neurons) == {node: {model} for node, model in by_node.items()}
    for model in ("a", "b"):
        assert sum(neuron_loads(n, model) for n in neurons.values()) == 1


def test_a_cold_load_through_both_gateways_is_one_load(two_gateways, neurons) -> None:
    g1, g2 = two_gateways(profiles("cold"))
    jobs = [g1, g2] * 3
    with ThreadPoolExecutor(len(jobs)) as pool:
        served = list(pool.map(lambda gateway: ask(gateway, "cold"), jobs))
    assert len(set(served)) == 1  # every client, through either gateway, on one node
    assert sum(neuron_loads(n, "cold") for n in neurons.values()) == 1
    where = {name for name, models in placed(neurons).items() if "cold" in models}
    assert where == {served[0]}


def status_json(gateway: Gateway) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "cortex.cli.main", "status", "--gateway", gateway.url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def fleet_shape(status: dict) -> dict:
    """What both gateways must agree on: the nodes, up or not, their devices and the
    models on each with their state (not what moves between two polls)."""
    return {
        node["name"]: (
            node["up"],
            sorted((d["id"], d["memory_budget_mb"]) for d in node["devices"]),
            sorted((m["id"], m["state"]) for m in node["models"]),
        )
        for node in status["nodes"]
    }


def test_cortex_status_shows_the_same_fleet_through_either_gateway(two_gateways, neurons) -> None:
    g1, g2 = two_gateways(profiles("seen"))
    node = ask(g1, "seen")  # loaded through the first gateway only
    expected = {
        name: (True, sorted((d["id"], d["memory_budget_mb"]) for d in n.status()["devices"]),
               [("seen", "ready")] if name == node else [])
        for name, n in neurons.items()
    }  # fmt: skip
    for gateway in (g1, g2):
        wait_for(
            lambda gateway=gateway: fleet_shape(status_json(gateway)) == expected,
            f"{gateway.url} shows the fleet as the neurons report it",
        )
    assert fleet_shape(status_json(g1)) == fleet_shape(status_json(g2))
