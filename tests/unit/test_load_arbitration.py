"""Several gateways over one fleet (issue 17 §5), without processes.

Each neuron here is a real ``ModelManager`` over fake files and engines (``fakes``),
behind an in-memory ``NeuronClient``; each gateway is a real ``Scheduler`` with its own
``Fleet``, so two of them share the neurons as two ``cortex serve`` processes would.
Launches can be held, so a load stays under way while the other gateway acts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fakes import FakeFiles, eventually, running_manager, spec_of
from prometheus_client import CollectorRegistry

from cortex.config import EvictionSection, NeuronEndpoint
from cortex.errors import InsufficientMemory
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.fleet import Fleet, Node
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.neuron_client import UpstreamResponse, memory_refusal
from cortex.gateway.scheduler import Scheduler
from cortex.neuron.runtime.manager import ModelManager
from cortex.protocol.errors import openai_error_body
from cortex.protocol.neuron import (
    EstimateAnswer,
    LoadAnswer,
    ModelState,
    NodeStatus,
    UnloadAnswer,
)
from cortex.spec import ModelSpec

MODEL_MB = 100
SMALL_MB = 150  # one model fits, two do not
BIG_MB = 1000


class InProcessNeuron:
    """A ``NeuronClient`` calling a ``ModelManager`` directly, as the routes do."""

    def __init__(self, name: str, manager: ModelManager) -> None:
        self.name = name
        self.manager = manager

    async def status(self, timeout_s: float) -> NodeStatus:
        devices = self.manager.devices_status()
        return NodeStatus(node=self.name, devices=devices, models=self.manager.statuses())

    async def load(self, spec: ModelSpec, timeout_s: float = 1800) -> LoadAnswer:
        model, outcome = await self.manager.load_or_join(spec)
        return LoadAnswer(**model.status().model_dump(), outcome=outcome)

    async def estimate(self, spec: ModelSpec, timeout_s: float = 60) -> EstimateAnswer:
        raise AssertionError("every profile here sets memory_mb: nothing to estimate")

    async def unload(self, model_id: str, timeout_s: float = 120) -> UnloadAnswer:
        await self.manager.unload(model_id)
        return UnloadAnswer(id=model_id)

    async def open_stream(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> UpstreamResponse:
        raise NotImplementedError


@dataclass
class Gateway:
    """One gateway's scheduler and picture of the shared neurons. ``stale_polls``: that
    many of its next reads of a node's /status are skipped, as if they were answered
    just before another gateway's load began."""

    scheduler: Scheduler
    fleet: Fleet
    registry: CollectorRegistry
    stale_polls: int = 0
    polls: list[str] = field(default_factory=list)

    def where(self, model_id: str) -> list[str]:
        return self.fleet.loaded_on(model_id)

    def loads(self, model_id: str, result: str) -> float:
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == "cortex_model_loads_total"
            and (sample.labels["model"], sample.labels["result"]) == (model_id, result)
        )


def gateway_over(neurons: dict[str, InProcessNeuron], profiles: list[ModelSpec]) -> Gateway:
    endpoints = [NeuronEndpoint(name=name, endpoint=f"http://{name}:1") for name in neurons]
    fleet = Fleet(endpoints, down_after_misses=1)
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    holder: list[Gateway] = []

    async def refresh(name: str) -> None:
        gateway = holder[0]
        if gateway.stale_polls > 0:
            gateway.stale_polls -= 1
            return
        gateway.polls.append(name)
        fleet.record_status(name, await neurons[name].status(timeout_s=1))

    scheduler = Scheduler(
        fleet, Catalogue(profiles), neurons, EvictionSection(), metrics, refresh=refresh
    )
    holder.append(Gateway(scheduler, fleet, registry))
    return holder[0]


async def poll_all(gateway: Gateway, neurons: dict[str, InProcessNeuron]) -> None:
    for name, neuron in neurons.items():
        gateway.fleet.record_status(name, await neuron.status(timeout_s=1))


def profile(model_id: str) -> ModelSpec:
    return spec_of(model_id, memory_mb=MODEL_MB)


PROFILES = [profile("a"), profile("b")]


@dataclass
class Neuron:
    files: FakeFiles
    manager: ModelManager
    client: InProcessNeuron

    def used_mb(self) -> int:
        return self.manager.devices_status()[0].memory_used_by_models_mb

    def loads(self, model_id: str, result: str) -> float:
        labels = {"model": model_id, "result": result}
        registry = self.manager.metrics.registry
        return registry.get_sample_value("neuron_model_loads_total", labels) or 0.0

    def joins(self, model_id: str) -> float:
        registry = self.manager.metrics.registry
        value = registry.get_sample_value("neuron_model_load_joins_total", {"model": model_id})
        return value or 0.0


@asynccontextmanager
async def fleet_of(tmp_path: Path, **budgets: int) -> AsyncIterator[dict[str, Neuron]]:
    """Neurons named by ``budgets`` (MB), each a started manager over its own files."""
    async with AsyncExitStack() as stack:
        nodes = {}
        for name, budget in budgets.items():
            folder = tmp_path / name
            folder.mkdir()
            files = FakeFiles(folder)
            manager = await stack.enter_async_context(running_manager(files, budget_mb=budget))
            nodes[name] = Neuron(files, manager, InProcessNeuron(name, manager))
        yield nodes


def clients(nodes: dict[str, Neuron]) -> dict[str, InProcessNeuron]:
    return {name: node.client for name, node in nodes.items()}


async def acquire(gateway: Gateway, model_id: str) -> Node:
    node = await gateway.scheduler.acquire(model_id)
    gateway.scheduler.release(node, model_id)
    return node


# -- the neuron arbitrates its memory ------------------------------------------------------


async def test_the_neuron_refuses_a_load_that_no_longer_fits_with_the_numbers(
    tmp_path: Path,
) -> None:
    async with fleet_of(tmp_path, small=SMALL_MB) as nodes:
        small = nodes["small"]
        small.files.hold_launches()
        first = asyncio.create_task(small.manager.load_or_join(profile("a")))
        await eventually(lambda: small.files.waiting == 1)  # a is loading, memory claimed
        second = asyncio.create_task(small.manager.load_or_join(profile("b")))
        small.files.release_launches()
        assert (await first)[1] == "loaded"
        with pytest.raises(InsufficientMemory) as refused:
            await second
        assert refused.value.status == 507 and refused.value.code == "insufficient_memory"
        assert (refused.value.need_mb, refused.value.free_mb) == (MODEL_MB, SMALL_MB - MODEL_MB)
        assert refused.value.device == "cpu"
        assert small.used_mb() == MODEL_MB and len(small.files.launches) == 1
        assert (small.loads("a", "ok"), small.loads("b", "refused")) == (1, 1)


async def test_a_load_of_a_model_already_loading_joins_it(tmp_path: Path) -> None:
    async with fleet_of(tmp_path, n1=BIG_MB) as nodes:
        n1 = nodes["n1"]
        n1.files.hold_launches()
        first = asyncio.create_task(n1.manager.load_or_join(profile("a")))
        await eventually(lambda: n1.files.waiting == 1)
        statuses = n1.manager.statuses()
        assert [(m.id, m.state) for m in statuses] == [("a", ModelState.LOADING)]
        second = asyncio.create_task(n1.manager.load_or_join(profile("a")))
        await eventually(lambda: n1.joins("a") == 1)
        n1.files.release_launches()
        (one, how_one), (other, how_other) = await first, await second
        assert one is other and (how_one, how_other) == ("loaded", "joined")
        assert len(n1.files.launches) == 1 and n1.loads("a", "ok") == 1
        # and once it is there, a load call finds it
        assert (await n1.manager.load_or_join(profile("a")))[1] == "present"


async def test_a_joined_load_that_fails_fails_every_caller_once(tmp_path: Path) -> None:
    async with fleet_of(tmp_path, n1=BIG_MB) as nodes:
        n1 = nodes["n1"]
        n1.files.hold_launches()
        n1.files.fail_launches(RuntimeError("no engine"))
        calls = [asyncio.create_task(n1.manager.load_or_join(profile("a"))) for _ in range(2)]
        await eventually(lambda: n1.files.waiting == 1)
        await eventually(lambda: n1.joins("a") == 1)
        n1.files.release_launches()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert len(n1.files.launches) == 1 and n1.manager.statuses() == []
        assert n1.loads("a", "failed") == 1


def test_a_507_from_a_neuron_is_read_back_as_the_typed_refusal() -> None:
    sent = InsufficientMemory("no room", need_mb=300, free_mb=120, device="cuda:0")
    body = openai_error_body(sent)
    assert body["error"]["need_mb"] == 300  # on the wire beside OpenAI's fields
    read = memory_refusal(json.dumps(body).encode())
    assert isinstance(read, InsufficientMemory)
    assert (read.need_mb, read.free_mb, read.device, read.message) == (
        300,
        120,
        "cuda:0",
        "no room",
    )
    # an older neuron's 507, or a body that is not JSON, is still the typed refusal
    assert isinstance(memory_refusal(b"<html>"), InsufficientMemory)


# -- two gateways, one fleet ------------------------------------------------------------------


async def test_a_gateway_sees_the_others_load_and_places_elsewhere(tmp_path: Path) -> None:
    async with fleet_of(tmp_path, small=SMALL_MB, big=BIG_MB) as nodes:
        one, two = (gateway_over(clients(nodes), PROFILES) for _ in range(2))
        for gateway in (one, two):
            await poll_all(gateway, clients(nodes))
        small = nodes["small"]
        small.files.hold_launches()
        loading_a = asyncio.create_task(acquire(one, "a"))
        await eventually(lambda: small.files.waiting == 1)  # best fit: the small node
        # the second gateway reads the nodes afresh before its cold load: b cannot go
        # where a is loading, so it goes to the big node without asking the small one
        assert (await acquire(two, "b")).name == "big"
        small.files.release_launches()
        assert (await loading_a).name == "small"
        assert small.loads("b", "refused") == 0 and small.used_mb() == MODEL_MB


async def test_a_refused_load_is_placed_on_another_node(tmp_path: Path) -> None:
    async with fleet_of(tmp_path, small=SMALL_MB, big=BIG_MB) as nodes:
        one, two = (gateway_over(clients(nodes), PROFILES) for _ in range(2))
        for gateway in (one, two):
            await poll_all(gateway, clients(nodes))
        small = nodes["small"]
        small.files.hold_launches()
        loading_a = asyncio.create_task(acquire(one, "a"))
        await eventually(lambda: small.files.waiting == 1)
        # the second gateway's reads before its load miss a (they raced it), so it
        # plans b where a is: the neuron refuses it, and the plan is made again
        two.stale_polls = len(nodes)
        loading_b = asyncio.create_task(acquire(two, "b"))
        await eventually(lambda: "b" in {m.id for m in small.manager.statuses()})
        small.files.release_launches()
        assert (await loading_a).name == "small"
        assert (await loading_b).name == "big"
        assert small.loads("b", "refused") == 1 and two.loads("b", "refused") == 1
        assert small.used_mb() == MODEL_MB  # never both
        assert [m.id for m in small.manager.models()] == ["a"]
        assert two.where("a") == ["small"] and two.where("b") == ["big"]


async def test_a_refused_load_evicts_the_other_gateways_idle_model_when_alone(
    tmp_path: Path,
) -> None:
    async with fleet_of(tmp_path, small=SMALL_MB) as nodes:
        one, two = (gateway_over(clients(nodes), PROFILES) for _ in range(2))
        for gateway in (one, two):
            await poll_all(gateway, clients(nodes))
        small = nodes["small"]
        small.files.hold_launches()
        loading_a = asyncio.create_task(acquire(one, "a"))
        await eventually(lambda: small.files.waiting == 1)
        two.stale_polls = 1
        loading_b = asyncio.create_task(acquire(two, "b"))
        await eventually(lambda: "b" in {m.id for m in small.manager.statuses()})
        small.files.release_launches()
        assert (await loading_a).name == "small"
        # refused once a was there; from the node's fresh state: a is idle, evict it
        assert (await loading_b).name == "small"
        assert small.loads("b", "refused") == 1 and small.loads("b", "ok") == 1
        assert [m.id for m in small.manager.models()] == ["b"]
        assert small.used_mb() == MODEL_MB


async def test_a_cold_load_through_two_gateways_is_one_load(tmp_path: Path) -> None:
    async with fleet_of(tmp_path, n1=BIG_MB, n2=BIG_MB) as nodes:
        one, two = (gateway_over(clients(nodes), PROFILES) for _ in range(2))
        for gateway in (one, two):
            await poll_all(gateway, clients(nodes))
        for node in nodes.values():
            node.files.hold_launches()
        first = asyncio.create_task(acquire(one, "a"))
        await eventually(lambda: sum(n.files.waiting for n in nodes.values()) == 1)
        second = asyncio.create_task(acquire(two, "a"))
        await eventually(lambda: sum(n.joins("a") for n in nodes.values()) == 1)
        for node in nodes.values():
            node.files.release_launches()
        served = {(await first).name, (await second).name}
        assert len(served) == 1
        assert sum(len(n.files.launches) for n in nodes.values()) == 1
        assert (one.loads("a", "ok"), two.loads("a", "joined")) == (1, 1)


async def test_a_cold_load_the_other_gateway_missed_is_still_joined_on_the_neuron(
    tmp_path: Path,
) -> None:
    async with fleet_of(tmp_path, n1=BIG_MB, n2=BIG_MB) as nodes:
        one, two = (gateway_over(clients(nodes), PROFILES) for _ in range(2))
        for gateway in (one, two):
            await poll_all(gateway, clients(nodes))
        for node in nodes.values():
            node.files.hold_launches()
        first = asyncio.create_task(acquire(one, "a"))
        await eventually(lambda: sum(n.files.waiting for n in nodes.values()) == 1)
        # its reads raced the first load: it plans from the same picture, to the same
        # node, whose neuron joins the load under way
        two.stale_polls = len(nodes)
        second = asyncio.create_task(acquire(two, "a"))
        await eventually(lambda: sum(n.joins("a") for n in nodes.values()) == 1)
        for node in nodes.values():
            node.files.release_launches()
        assert (await first).name == (await second).name
        assert sum(len(n.files.launches) for n in nodes.values()) == 1
        assert two.loads("a", "joined") == 1


async def test_a_model_the_other_gateway_loaded_since_the_last_poll_is_not_loaded_again(
    tmp_path: Path,
) -> None:
    async with fleet_of(tmp_path, n1=BIG_MB, n2=BIG_MB) as nodes:
        one, two = (gateway_over(clients(nodes), PROFILES) for _ in range(2))
        for gateway in (one, two):
            await poll_all(gateway, clients(nodes))
        assert (await acquire(one, "a")).name == "n1"
        assert two.where("a") == []  # its last poll was before that load
        # its cold-load path reads the nodes again and finds a ready: no load at all
        assert (await acquire(two, "a")).name == "n1"
        assert sum(len(n.files.launches) for n in nodes.values()) == 1
        assert two.loads("a", "ok") + two.loads("a", "joined") == 0
