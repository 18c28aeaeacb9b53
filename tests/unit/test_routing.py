"""Which holder serves a request (``gateway.routing``, through ``Scheduler.acquire``): the
node holding the deepest prefix of its prompt, unless that node's batch is full; else the
least loaded; an explicit session pins. Fleets built from typed /status answers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from cortex.config import EvictionSection, NeuronEndpoint
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.fleet import Fleet
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.routing import choose_holder, estimate_cost
from cortex.gateway.scheduler import Scheduler
from cortex.protocol.neuron import DeviceStatus, ModelState, ModelStatus, NodeStatus
from cortex.protocol.prefix_digest import MIN_SHARED_CHARS, Chain, chain_of
from cortex.spec import ModelSpec

SPEC = ModelSpec(id="m", source="file:/models/m.gguf", max_batch=2)
CPU = DeviceStatus(
    id="cpu",
    name="CPU",
    memory_total_mb=16000,
    memory_free_mb=12000,
    memory_budget_mb=None,
    memory_used_by_models_mb=300,
)


def conversation(topic: str, turns: int, system: str = "Be brief.") -> Chain:
    messages = [{"role": "system", "content": system}]
    for turn in range(turns):
        if turn:
            messages.append({"role": "assistant", "content": f"answer {turn}"})
        messages.append({"role": "user", "content": f"{topic}, question {turn}"})
    return chain_of({"messages": messages})


def hashes(topic: str, turns: int, system: str = "Be brief.") -> list[str]:
    return conversation(topic, turns, system).hashes


def model(digest: list[str] | None = None, in_flight: int = 0, queued: int = 0) -> ModelStatus:
    return ModelStatus(
        id="m",
        state=ModelState.READY,
        spec=SPEC,
        devices=["cpu"],
        memory_mb=300,
        context_length=4096,
        in_flight=in_flight,
        queued=queued,
        last_used=0.0,
        **({"prefix_digest": digest} if digest is not None else {}),
    )


def fleet_of(**models: ModelStatus) -> Fleet:
    fleet = Fleet([NeuronEndpoint(name=n, endpoint=f"http://{n}:1") for n in models], 1)
    for name, status in models.items():
        fleet.record_status(name, NodeStatus(node=name, devices=[CPU], models=[status]))
    return fleet


def scheduler_of(fleet: Fleet) -> Scheduler:
    async def refresh(_: str) -> None:
        return None

    metrics = GatewayMetrics(CollectorRegistry())
    return Scheduler(fleet, Catalogue([]), {}, EvictionSection(), metrics, refresh)


def test_the_node_holding_the_deepest_prefix_wins() -> None:
    rivers, lakes = hashes("rivers", 1), hashes("lakes", 2)
    fleet = fleet_of(a=model(digest=lakes), b=model(digest=rivers, in_flight=1))
    holders = fleet.holders("m")
    assert choose_holder(holders, "m", conversation("rivers", 2)).name == "b"  # busier, yet
    assert choose_holder(holders, "m", conversation("lakes", 3)).name == "a"
    # both hold the system prompt: that alone decides nothing, the idlest does
    assert choose_holder(holders, "m", conversation("seas", 1)).name == "a"
    assert choose_holder(holders, "m", None).name == "a"


def test_a_short_shared_opening_is_not_worth_a_busier_node() -> None:
    """Only b has seen the system prompt: a few words of it do not outweigh load, a long
    one does."""
    short, long = "Be brief.", "Follow these rules. " * (MIN_SHARED_CHARS // 20)
    fleet = fleet_of(
        a=model(), b=model(digest=hashes("rivers", 1) + hashes("rivers", 1, long), in_flight=1)
    )
    holders = fleet.holders("m")
    assert choose_holder(holders, "m", conversation("seas", 1, short)).name == "a"
    assert choose_holder(holders, "m", conversation("seas", 1, long)).name == "b"


def test_a_full_batch_is_not_waited_on_for_a_prefix() -> None:
    rivers = hashes("rivers", 1)
    fleet = fleet_of(a=model(), b=model(digest=rivers, in_flight=2, queued=1))
    assert choose_holder(fleet.holders("m"), "m", conversation("rivers", 2)).name == "a"
    # when every holder is full, the prefix decides again
    fleet = fleet_of(a=model(in_flight=2), b=model(digest=rivers, in_flight=2))
    assert choose_holder(fleet.holders("m"), "m", conversation("rivers", 2)).name == "b"


def test_a_neuron_without_a_digest_is_read_as_holding_nothing() -> None:
    """A contract 1.0 neuron reports no prefix_digest: routing falls back to load."""
    old = model().model_dump(mode="json")
    del old["prefix_digest"]
    status = ModelStatus.model_validate(old)
    assert status.prefix_digest == []
    fleet = fleet_of(a=status, b=status)
    assert choose_holder(fleet.holders("m"), "m", conversation("rivers", 2)).name == "a"


async def test_new_conversations_spread_and_follow_ups_come_back() -> None:
    """One at a time (equal load), openings alternate between the nodes; each follow-up
    then goes where its opening went, by what the gateway itself sent there."""
    fleet = fleet_of(a=model(), b=model())
    scheduler = scheduler_of(fleet)
    served: dict[str, str] = {}
    for topic in ("rivers", "lakes", "seas", "ponds"):
        node = await scheduler.acquire("m", prefix=conversation(topic, 1))
        scheduler.release(node, "m")
        served[topic] = node.name
    assert sorted(served.values()) == ["a", "a", "b", "b"]
    for turns in (2, 3):
        for topic, name in served.items():
            node = await scheduler.acquire("m", prefix=conversation(topic, turns))
            scheduler.release(node, "m")
            assert node.name == name, topic


async def test_the_neurons_digest_is_enough_after_a_gateway_restart() -> None:
    fleet = fleet_of(a=model(digest=hashes("rivers", 1)), b=model())
    scheduler = scheduler_of(fleet)  # a fresh gateway: nothing routed yet
    node = await scheduler.acquire("m", prefix=conversation("rivers", 2))
    assert node.name == "a"


async def test_an_explicit_session_pins_over_the_prefix() -> None:
    fleet = fleet_of(a=model(), b=model(digest=hashes("rivers", 1)))
    scheduler = scheduler_of(fleet)
    first = await scheduler.acquire("m", session="s1")
    scheduler.release(first, "m")
    assert first.name == "a"
    pinned = await scheduler.acquire("m", session="s1", prefix=conversation("rivers", 2))
    assert pinned.name == "a"


def test_unloading_forgets_what_was_routed() -> None:
    fleet = fleet_of(a=model(digest=["x"]), b=model())
    node = fleet.nodes["a"]
    node.routed_prefix("m", ["y"])
    assert node.prefix_depth("m", ["x"]) == 1 and node.prefix_depth("m", ["q", "y"]) == 2
    fleet.record_unloaded("a", "m")
    assert node.prefix_depth("m", ["x"]) == 0 and node.prefix_depth("m", ["q", "y"]) == 0


# -- copies: least outstanding tokens ---------------------------------------------------------

WIDE = ModelSpec(id="m", source="file:/models/m.gguf", max_batch=8)


def wide_model(digest: list[str] | None = None) -> ModelStatus:
    return model(digest).model_copy(update={"spec": WIDE})


def test_the_copy_with_fewest_outstanding_tokens_wins_over_fewer_requests() -> None:
    fleet = fleet_of(a=wide_model(), b=wide_model())
    fleet.nodes["a"].begin("m", 3000)  # one long request
    fleet.nodes["b"].begin("m", 100)  # two short ones
    fleet.nodes["b"].begin("m", 100)
    assert choose_holder(fleet.holders("m"), "m", None).name == "b"
    fleet.nodes["b"].begin("m", 3000)
    assert choose_holder(fleet.holders("m"), "m", None).name == "a"


def test_a_prefix_is_followed_until_its_node_is_a_batch_behind() -> None:
    """a holds the conversation. One batch's worth = max_batch (8) x the mean request in
    flight; a may be behind b by that much, not more."""
    fleet = fleet_of(a=wide_model(digest=hashes("rivers", 1)), b=wide_model())
    a, b = fleet.nodes["a"], fleet.nodes["b"]
    a.begin("m", 1000)
    b.begin("m", 100)  # a is 900 behind; a batch is 8 x 550
    assert choose_holder(fleet.holders("m"), "m", conversation("rivers", 2)).name == "a"
    for _ in range(4):
        a.begin("m", 20_000)
    # a is 80 900 behind; a batch is 8 x 81 100 / 6: still a
    assert choose_holder(fleet.holders("m"), "m", conversation("rivers", 2)).name == "a"
    for _ in range(5):
        b.begin("m", 10)
    # now 11 requests, mean 7 377; a batch is 59 018; a is 80 850 behind: b
    assert choose_holder(fleet.holders("m"), "m", conversation("rivers", 2)).name == "b"


async def test_a_session_leaves_its_node_once_it_is_a_batch_behind() -> None:
    fleet = fleet_of(a=model(), b=model())
    scheduler = scheduler_of(fleet)
    first = await scheduler.acquire("m", session="s1", tokens=100)
    scheduler.release(first, "m", 100)
    assert first.name == "a"
    fleet.nodes["a"].begin("m", 500)
    again = await scheduler.acquire("m", session="s1", tokens=100)
    assert again.name == "a"  # 500 behind, a batch is 2 x 500: stays
    scheduler.release(again, "m", 100)
    fleet.nodes["b"].begin("m", 10)
    fleet.nodes["a"].begin("m", 9500)  # 9990 behind, a batch is 2 x 3337: moves
    moved = await scheduler.acquire("m", session="s1", tokens=100)
    assert moved.name == "b"


def test_released_tokens_are_given_back() -> None:
    fleet = fleet_of(a=model())
    node = fleet.nodes["a"]
    node.begin("m", 300)
    node.begin("m", 200)
    node.end("m", 300)
    assert node.outstanding_tokens("m") == 200
    node.end("m", 200)
    assert node.outstanding_tokens("m") == 0 and "m" not in node.tokens


def test_a_requests_cost_is_its_prompt_bytes_over_four_and_its_max_tokens() -> None:
    body = b'{"messages":[{"role":"user","content":"' + b"x" * 360 + b'"}],"max_tokens":50}'
    cost = estimate_cost(body)
    assert (cost.prompt, cost.max_new) == (len(body) // 4, 50)
    assert cost.capped(4096) == len(body) // 4 + 50
    assert cost.capped(64) == 64  # never more than the context
    unbounded = estimate_cost(b'{"prompt":"hi","max_completion_tokens":7}')
    assert unbounded.max_new == 7
    assert estimate_cost(b'{"prompt":"hi"}').capped(4096) == 4096  # may run to the end
