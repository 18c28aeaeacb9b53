"""The pure placement, eviction and defrag decisions, and the rooms they decide over."""

from __future__ import annotations

import math

from cortex.config import NeuronEndpoint
from cortex.gateway.fleet import Fleet
from cortex.gateway.placement import (
    LoadPlan,
    Move,
    NoRoom,
    Resident,
    Room,
    eviction_order,
    idle_models,
    plan_defrag,
    plan_load,
)
from cortex.gateway.rooms import rooms_of
from cortex.protocol.neuron import DeviceStatus, ModelState, ModelStatus, NodeStatus
from cortex.spec import ModelSpec


def resident(model_id: str, memory_mb: int, last_used: float, **kwargs) -> Resident:
    return Resident(model_id=model_id, memory_mb=memory_mb, last_used=last_used, **kwargs)


def test_a_free_fit_takes_the_tightest_device() -> None:
    rooms = [Room("a", "cpu", 500), Room("b", "cpu", 150), Room("c", "cpu", 90)]
    assert plan_load(rooms, 100, "lru") == LoadPlan("b", "cpu")


def test_lru_evicts_the_least_recently_used_first() -> None:
    room = Room(
        "a",
        "cpu",
        50,
        (resident("new", 100, 30), resident("old", 100, 10), resident("mid", 100, 20)),
    )
    assert plan_load([room], 120, "lru") == LoadPlan("a", "cpu", ("old",))
    assert plan_load([room], 220, "lru") == LoadPlan("a", "cpu", ("old", "mid"))


def test_priority_evicts_the_lowest_priority_then_lru_among_equals() -> None:
    residents = (
        resident("old-important", 100, 1, priority=90),
        resident("new-cheap", 100, 50, priority=10),
        resident("old-cheap", 100, 40, priority=10),
    )
    order = [r.model_id for r in eviction_order(residents, "priority")]
    assert order == ["old-cheap", "new-cheap", "old-important"]
    assert next(r.model_id for r in eviction_order(residents, "lru")) == "old-important"


def test_pinned_and_busy_models_never_leave() -> None:
    room = Room(
        "a",
        "cpu",
        0,
        (
            resident("pinned", 300, 1, pinned=True),
            resident("busy", 300, 2, busy=True),
            resident("idle", 100, 3),
        ),
    )
    assert plan_load([room], 100, "lru") == LoadPlan("a", "cpu", ("idle",))
    too_big = plan_load([room], 200, "lru")
    assert isinstance(too_big, NoRoom)
    assert too_big.largest_slot_mb == 100
    assert too_big.transient  # fits once "busy" finishes


def test_a_model_too_big_for_any_node_is_not_transient() -> None:
    rooms = [
        Room("a", "cpu", 100, (resident("x", 200, 1),)),
        Room("b", "cpu", 250, (resident("pin", 500, 1, pinned=True),)),
    ]
    answer = plan_load(rooms, 1000, "lru")
    assert answer == NoRoom(
        need_mb=1000, largest_slot_mb=300, largest_slot_node="a", transient=False
    )


def test_eviction_goes_where_the_most_valuable_victim_is_least_valuable() -> None:
    rooms = [
        Room("a", "cpu", 0, (resident("recent", 200, 100),)),
        Room("b", "cpu", 0, (resident("stale", 200, 5),)),
    ]
    assert plan_load(rooms, 150, "lru") == LoadPlan("b", "cpu", ("stale",))


def test_idle_models_skip_pinned_and_busy() -> None:
    room = Room(
        "a",
        "cpu",
        0,
        (
            resident("idle", 10, 0),
            resident("pinned", 10, 0, pinned=True),
            resident("busy", 10, 0, busy=True),
            resident("recent", 10, 95),
        ),
    )
    found = idle_models([room], now=100, idle_after_s=30)
    assert [(i.node, i.model_id) for i in found] == [("a", "idle")]
    assert idle_models([room], now=100, idle_after_s=0) == []


def test_a_clients_keep_alive_replaces_the_idle_time_of_its_model() -> None:
    room = Room(
        "a",
        "cpu",
        0,
        (
            resident("now", 10, 100),  # just used: keep_alive 0 unloads it all the same
            resident("forever", 10, 0),
            resident("pinned", 10, 0, pinned=True),
            resident("default", 10, 0),
        ),
    )
    keep = {"now": 0.0, "forever": math.inf, "pinned": 0.0}
    found = idle_models([room], now=100, idle_after_s=30, keep_alive=keep)
    assert [i.model_id for i in found] == ["now", "default"]
    found = idle_models([room], now=100, idle_after_s=0, keep_alive=keep)
    assert [i.model_id for i in found] == ["now"]


def test_defrag_empties_the_device_whose_models_fit_elsewhere() -> None:
    rooms = [
        Room("a", "cpu", 150, (resident("m1", 100, 1),)),
        Room("b", "cpu", 120, (resident("m2", 100, 1),)),
        Room("c", "cpu", 50, (resident("m3", 200, 1, pinned=True),)),
    ]
    # Emptying a puts m1 in b's gap: a then has 250 free, more than any slot today.
    assert plan_defrag(rooms) == [Move("m1", "a", "b", 100)]


def test_defrag_respects_affinity_pins_and_duplicates() -> None:
    rooms = [
        Room("a", "cpu", 150, (resident("m1", 100, 1, allowed_nodes=frozenset({"a"})),)),
        Room("b", "cpu", 120, (resident("m2", 100, 1, pinned=True),)),
    ]
    assert plan_defrag(rooms) == []
    already_there = [
        Room("a", "cpu", 150, (resident("m1", 100, 1),)),
        Room("b", "cpu", 120, (resident("m1", 100, 1, busy=True),)),
    ]
    assert plan_defrag(already_there) == []


def test_defrag_does_nothing_when_it_would_not_grow_the_largest_slot() -> None:
    rooms = [
        Room("a", "cpu", 10, (resident("m1", 100, 1),)),
        Room("b", "cpu", 500),
    ]
    assert plan_defrag(rooms) == []


def test_rooms_come_from_the_typed_status_within_the_budget() -> None:
    def loaded(model_id: str, state: ModelState, **spec: object) -> ModelStatus:
        return ModelStatus(
            id=model_id,
            state=state,
            spec=ModelSpec(id=model_id, source=f"file:/{model_id}.gguf", **spec),
            devices=["cpu"],
            memory_mb=1000,
            context_length=4096,
            in_flight=0,
            queued=0,
            last_used=5.0,
        )

    cpu = DeviceStatus(
        id="cpu",
        name="CPU",
        memory_total_mb=64000,
        memory_free_mb=50000,
        memory_budget_mb=6000,
        memory_used_by_models_mb=3000,
    )
    models = [
        loaded("idle", ModelState.READY, priority=10),
        loaded("pinned", ModelState.READY, pinned=True),
        loaded("loading", ModelState.LOADING),
    ]
    fleet = Fleet([NeuronEndpoint(name="a", endpoint="http://a:1")], down_after_misses=1)
    fleet.record_status("a", NodeStatus(node="a", devices=[cpu], models=models))
    node = fleet.nodes["a"]
    node.reserved_mb["cpu"] = 500  # a load under way
    node.leaving.add("pinned")  # being unloaded: no longer a resident
    (room,) = rooms_of([node], profiles={})
    assert (room.node, room.device, room.free_mb) == ("a", "cpu", 6000 - 3000 - 500)
    by_id = {r.model_id: r for r in room.residents}
    assert by_id.keys() == {"idle", "loading"}
    assert by_id["idle"].priority == 10 and not by_id["idle"].busy
    assert by_id["loading"].busy  # not ready: not idle either
