"""Replicas carried out (``gateway/scaling.py``): a real ``Scheduler`` over neurons that
are real ``ModelManager``s with fake engines (the harness of ``test_load_arbitration``).

The clock of ``ReplicaControl`` is the test's, so "the queue stayed deep for 10 s" is
a number set here, not a wait; the queue itself is the ``waiting`` hook the app sets
to the fair queue's depth.
"""

from __future__ import annotations

import time
from pathlib import Path

from test_load_arbitration import (
    MODEL_MB,
    Gateway,
    clients,
    fleet_of,
    gateway_over,
    poll_all,
)

from cortex.gateway.replicas import AddCopy, RetireCopy
from cortex.spec import ModelSpec


def replicated(**fields: object) -> ModelSpec:
    return ModelSpec(id="m", source="file:/fake/m.gguf", memory_mb=MODEL_MB, max_batch=1, **fields)


class Clock:
    """Wall time plus what the test has advanced, as ``ReplicaControl`` reads it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def controlled(gateway: Gateway, waiting: dict[str, int]) -> Clock:
    clock = Clock()
    gateway.scheduler.replicas.clock = clock
    gateway.scheduler.replicas.waiting = lambda model_id: waiting.get(model_id, 0)
    return clock


async def step(gateway: Gateway) -> list[AddCopy | RetireCopy]:
    """One housekeeping round, its loads and unloads done."""
    decisions = gateway.scheduler.replicas.step()
    await gateway.scheduler.replicas.settle()
    return decisions


async def test_a_queue_deep_for_scale_up_after_s_adds_a_copy_on_the_other_node(
    tmp_path: Path,
) -> None:
    async with fleet_of(tmp_path, n1=1000, n2=1000) as nodes:
        gateway = gateway_over(clients(nodes), [replicated(max_replicas=2, scale_up_after_s=10)])
        await poll_all(gateway, clients(nodes))
        first = (await gateway.scheduler.load("m")).name
        waiting = {"m": 3}  # more than max_batch (1) wait
        clock = controlled(gateway, waiting)
        assert await step(gateway) == []  # deep since now
        clock.offset = 9
        assert await step(gateway) == []
        clock.offset = 10
        [added] = await step(gateway)
        assert isinstance(added, AddCopy) and added.avoid_nodes == {first}
        assert sorted(gateway.where("m")) == ["n1", "n2"]
        last = gateway.scheduler.replicas.last["m"]
        assert (last.action, last.node, last.error) == (
            "add",
            "n2" if first == "n1" else "n1",
            None,
        )
        assert "3 waiting" in last.reason
        value = gateway.registry.get_sample_value("cortex_model_replicas", {"model": "m"})
        assert value == 2


async def test_a_shallow_queue_adds_nothing(tmp_path: Path) -> None:
    async with fleet_of(tmp_path, n1=1000, n2=1000) as nodes:
        gateway = gateway_over(clients(nodes), [replicated(max_replicas=2, scale_up_after_s=1)])
        await poll_all(gateway, clients(nodes))
        await gateway.scheduler.load("m")
        waiting = {"m": 1}  # exactly one batch waits: not deep
        clock = controlled(gateway, waiting)
        await step(gateway)
        clock.offset = 60
        assert await step(gateway) == []
        assert len(gateway.where("m")) == 1


async def test_never_above_max_replicas(tmp_path: Path) -> None:
    async with fleet_of(tmp_path, n1=1000, n2=1000, n3=1000) as nodes:
        gateway = gateway_over(clients(nodes), [replicated(max_replicas=2, scale_up_after_s=1)])
        await poll_all(gateway, clients(nodes))
        await gateway.scheduler.load("m")
        clock = controlled(gateway, {"m": 20})
        for second in range(10):
            clock.offset = second * 2
            await step(gateway)
        assert len(gateway.where("m")) == 2


async def test_an_idle_copy_is_retired_after_scale_down_after_s_never_below_min(
    tmp_path: Path,
) -> None:
    async with fleet_of(tmp_path, n1=1000, n2=1000) as nodes:
        profile = replicated(max_replicas=2, scale_up_after_s=0, scale_down_after_s=30)
        gateway = gateway_over(clients(nodes), [profile])
        await poll_all(gateway, clients(nodes))
        await gateway.scheduler.load("m")
        waiting = {"m": 5}
        clock = controlled(gateway, waiting)
        await step(gateway)
        assert len(gateway.where("m")) == 2
        waiting["m"] = 0
        clock.offset = 20
        assert await step(gateway) == []  # idle, not yet long enough
        clock.offset = 31
        [retired] = await step(gateway)
        assert isinstance(retired, RetireCopy)
        assert gateway.where("m") == [n for n in ("n1", "n2") if n != retired.node]
        assert gateway.scheduler.replicas.last["m"].action == "retire"
        clock.offset = 3600
        assert await step(gateway) == []  # the last copy stays: min_replicas = 1
        assert len(gateway.where("m")) == 1


async def test_a_busy_copy_is_not_retired(tmp_path: Path) -> None:
    async with fleet_of(tmp_path, n1=1000, n2=1000) as nodes:
        profile = replicated(max_replicas=2, scale_up_after_s=0, scale_down_after_s=30)
        gateway = gateway_over(clients(nodes), [profile])
        await poll_all(gateway, clients(nodes))
        await gateway.scheduler.load("m")
        waiting = {"m": 5}
        clock = controlled(gateway, waiting)
        await step(gateway)
        waiting["m"] = 0
        for name in gateway.where("m"):
            gateway.fleet.nodes[name].begin("m", 100)  # a request in flight on each
        clock.offset = 3600
        assert await step(gateway) == []
        assert len(gateway.where("m")) == 2


async def test_min_replicas_loads_copies_on_different_nodes_and_replaces_a_lost_one(
    tmp_path: Path,
) -> None:
    async with fleet_of(tmp_path, n1=1000, n2=1000, n3=1000) as nodes:
        gateway = gateway_over(clients(nodes), [replicated(min_replicas=2)])
        await poll_all(gateway, clients(nodes))
        controlled(gateway, {})
        await step(gateway)  # no request at all: min_replicas alone
        await step(gateway)
        held = sorted(gateway.where("m"))
        assert len(held) == 2
        assert await step(gateway) == []  # two is enough
        lost = held[0]
        gateway.fleet.mark_down(lost, "unplugged")
        [added] = await step(gateway)
        assert isinstance(added, AddCopy) and lost not in gateway.where("m")
        assert len(gateway.where("m")) == 2 and "min_replicas=2" in added.reason


async def test_min_replicas_copies_are_not_unloaded_for_idling(tmp_path: Path) -> None:
    async with fleet_of(tmp_path, n1=1000, n2=1000) as nodes:
        gateway = gateway_over(clients(nodes), [replicated(min_replicas=2)])
        await poll_all(gateway, clients(nodes))
        controlled(gateway, {})
        await step(gateway)
        await step(gateway)
        gateway.scheduler._eviction.idle_unload_after_s = 0.001
        time.sleep(0.01)
        await gateway.scheduler.unload_idle()
        assert len(gateway.where("m")) == 2


async def test_a_failing_replica_load_backs_off(tmp_path: Path) -> None:
    """n2 is too small for a copy: the add fails, is remembered with its error, and is
    not tried again each round but after the back-off."""
    async with fleet_of(tmp_path, n1=1000, n2=MODEL_MB // 2) as nodes:
        gateway = gateway_over(clients(nodes), [replicated(min_replicas=2)])
        await poll_all(gateway, clients(nodes))
        clock = controlled(gateway, {})
        assert len(await step(gateway)) == 1  # the first copy: n1
        assert gateway.where("m") == ["n1"]
        [tried] = await step(gateway)
        assert isinstance(tried, AddCopy)
        last = gateway.scheduler.replicas.last["m"]
        assert last.error is not None and last.node is None
        assert await step(gateway) == []  # backing off
        clock.offset = 4
        assert await step(gateway) == []
        clock.offset = 5
        assert len(await step(gateway)) == 1  # tried again, failed again: 10 s now
        clock.offset = 14
        assert await step(gateway) == []
        clock.offset = 15.5
        assert len(await step(gateway)) == 1
        assert gateway.where("m") == ["n1"]
