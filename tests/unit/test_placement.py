"""The pure placement, eviction and defrag decisions, and the rooms they decide over."""

from __future__ import annotations

import math

from cortex.config import NeuronEndpoint
from cortex.gateway.fleet import Fleet
from cortex.gateway.placement import (
    LoadPlan,
    Move,
    Need,
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


def test_a_gpu_beside_a_cpu_only_llama_cpp_build_takes_no_gguf_model() -> None:
    """A neuron on a GPU host with a CPU-only llama.cpp says so per device (contract
    1.3): GGUF placement skips that GPU, the dense engine and older neurons keep it."""

    def device(device_id: str, free_mb: int, **engines: str) -> DeviceStatus:
        return DeviceStatus(
            id=device_id,
            name=device_id,
            memory_total_mb=free_mb,
            memory_free_mb=free_mb,
            memory_budget_mb=None,
            memory_used_by_models_mb=0,
            engines=engines,
        )

    devices = [
        device("cpu", 8000, gguf="cpu", dense="cpu"),
        device("cuda:0", 24000, gguf="cpu-only build", dense="cuda"),
        device("cuda:1", 24000),  # an older neuron: no word on its engines
    ]
    fleet = Fleet([NeuronEndpoint(name="a", endpoint="http://a:1")], down_after_misses=1)
    fleet.record_status("a", NodeStatus(node="a", devices=devices, models=[]))
    node = fleet.nodes["a"]

    def offered(model_format: str | None) -> list[str]:
        return [room.device for room in rooms_of([node], {}, model_format)]

    assert offered("gguf") == ["cpu", "cuda:1"]
    assert offered("safetensors") == ["cpu", "cuda:0", "cuda:1"]
    assert offered(None) == ["cpu", "cuda:0", "cuda:1"]
    # so a GGUF model too big for the CPU is not planned onto the GPU it cannot use
    plan = plan_load(rooms_of([node], {}, "gguf"), 20000, "lru")
    assert plan == LoadPlan("a", "cuda:1")


# -- several devices: 2 nodes x 4 GPUs of mixed sizes ---------------------------------------


def gpus(node: str, sizes: list[int], residents: dict[int, tuple[Resident, ...]] | None = None):
    return [
        Room(node, f"cuda:{i}", size, (residents or {}).get(i, ())) for i, size in enumerate(sizes)
    ]


def fleet_2x4() -> list[Room]:
    return gpus("a", [24000, 24000, 24000, 80000]) + gpus("b", [24000, 80000, 24000, 80000])


def test_tp2_lands_on_two_devices_of_one_node_with_the_per_rank_charge() -> None:
    # 2 x 30000: fits no 24 GB GPU, so only node b's two 80 GB GPUs take it
    plan = plan_load(fleet_2x4(), Need((30000, 30000)), "lru")
    assert plan == LoadPlan("b", "cuda:1", (), shares=(("cuda:1", 30000), ("cuda:3", 30000)))
    assert plan.devices == ("cuda:1", "cuda:3")
    # 2 x 20000 fits two 24 GB GPUs: the tightest pair is taken, the 80 GB ones kept free
    small = plan_load(fleet_2x4(), Need((20000, 20000)), "lru")
    assert isinstance(small, LoadPlan) and small.node == "a"
    assert small.shares == (("cuda:0", 20000), ("cuda:1", 20000))


def test_a_model_no_single_gpu_holds_is_refused_by_width_1_but_placed_over_several() -> None:
    rooms = fleet_2x4()
    assert isinstance(plan_load(rooms, 100000, "lru"), NoRoom)  # bigger than any GPU
    plan = plan_load(rooms, Need((50000, 50000)), "lru")
    assert isinstance(plan, LoadPlan) and set(plan.devices) == {"cuda:1", "cuda:3"}


def test_tp4_is_refused_where_no_node_has_four_fitting_devices_and_says_why() -> None:
    answer = plan_load(fleet_2x4(), Need((30000,) * 4), "lru")
    assert isinstance(answer, NoRoom) and not answer.transient
    # each node has 4 GPUs, but at most two that hold 30000 MB
    assert "4 devices of one node" in answer.detail and "30000 MB" in answer.detail
    assert answer.largest_slot_mb == 24000
    too_wide = plan_load(fleet_2x4(), Need((1000,) * 5), "lru")
    assert isinstance(too_wide, NoRoom)
    assert "no eligible node has 5 that can take part (the most is 4" in too_wide.detail
    fits = plan_load(fleet_2x4(), Need((20000,) * 4), "lru")
    assert isinstance(fits, LoadPlan) and len(set(fits.devices)) == 4


def test_a_layer_split_too_big_for_one_gpu_lands_on_two_with_the_main_share_first() -> None:
    rooms = gpus("a", [24000, 24000, 24000, 24000])
    assert isinstance(plan_load(rooms, 40000, "lru"), NoRoom)
    plan = plan_load(rooms, Need((22000, 18000)), "lru")
    assert isinstance(plan, LoadPlan)
    assert plan.shares == (("cuda:0", 22000), ("cuda:1", 18000))
    assert plan.device == "cuda:0"  # llama.cpp's main_gpu


def test_cpu_ranks_share_the_one_cpu_device() -> None:
    rooms = [Room("a", "cpu", 5000, ranks=2), Room("b", "cpu", 50000, ranks=1)]
    plan = plan_load(rooms, Need((2000, 2000)), "lru")
    assert plan == LoadPlan("a", "cpu", (), (("cpu", 2000), ("cpu", 2000)))
    # two ranks of 3000 are 6000 MB on that one CPU: more than it has
    assert isinstance(plan_load(rooms, Need((3000, 3000)), "lru"), NoRoom)


def test_evicting_a_two_device_resident_frees_both_of_its_devices() -> None:
    wide = resident("wide", 20000, 1)  # TP=2, 20000 MB on each of cuda:0 and cuda:1
    recent = resident("recent", 20000, 50)
    rooms = gpus("a", [4000, 4000, 4000], {0: (wide,), 1: (wide,), 2: (recent,)})
    plan = plan_load(rooms, Need((22000, 22000)), "lru")
    # one eviction makes room on both devices; the more recent model stays
    assert plan == LoadPlan("a", "cuda:0", ("wide",), (("cuda:0", 22000), ("cuda:1", 22000)))
    # and a busy wide model keeps both of its devices: it fits once it is idle
    busy = resident("wide", 20000, 1, busy=True)
    rooms = gpus("a", [4000, 4000], {0: (busy,), 1: (busy,)})
    waiting = plan_load(rooms, Need((22000, 22000)), "lru")
    assert isinstance(waiting, NoRoom) and waiting.transient


def test_defrag_moves_a_two_device_model_as_one() -> None:
    wide = resident("wide", 10000, 1, width=2)
    rooms = gpus("a", [14000, 0], {0: (wide,), 1: (wide, resident("pin", 20000, 1, pinned=True))})
    rooms += gpus("b", [12000, 12000, 3000])
    # emptying a's cuda:0 means reloading "wide" whole on b (both of its ranks there)
    assert plan_defrag(rooms) == [Move("wide", "a", "b", 20000)]
    # with room for only one of its ranks on b, it is not moved at all
    rooms = rooms[:2] + gpus("b", [12000, 3000, 3000])
    assert plan_defrag(rooms) == []
