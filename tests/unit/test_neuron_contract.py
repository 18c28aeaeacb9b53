"""The gateway↔neuron contract (``protocol.neuron``): its types round-trip with the wire
names operators rely on, the gateway reads a neuron only through them (an answer that is
not one is a node error naming the field), and a neuron of another contract major is
shown but never routed to nor placed on. No processes: in-memory neurons behind the
``NeuronClient`` seam, and an in-process HTTP server where the HTTP client is the subject.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.testclient import TestClient

from cortex.config import EvictionSection, GatewayConfig, ModelsConfig, NeuronEndpoint
from cortex.errors import CortexError
from cortex.gateway.app import create_app
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.fleet import Fleet
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.neuron_client import HttpNeuronClient, NeuronClient, UpstreamResponse
from cortex.gateway.poller import Poller
from cortex.gateway.scheduler import Scheduler
from cortex.protocol.fleet import FleetView, GatewayPhase, ModelListing
from cortex.protocol.neuron import (
    CONTRACT_VERSION,
    DeviceStatus,
    EstimateAnswer,
    EstimateDetail,
    FaultAnswer,
    FaultRequest,
    GenerationReport,
    Health,
    LoadAnswer,
    ModelList,
    ModelState,
    ModelStatus,
    NodeStatus,
    TokenCount,
    UnloadAnswer,
    UnloadRequest,
    incompatibility,
)
from cortex.spec import ModelSpec, SamplingDefaults

SPEC = ModelSpec(id="m", source="file:/models/m.gguf", pinned=True, priority=70)
CPU = DeviceStatus(
    id="cpu",
    name="CPU",
    memory_total_mb=16000,
    memory_free_mb=12000,
    memory_budget_mb=8000,
    memory_used_by_models_mb=300,
)
MODEL = ModelStatus(
    id="m",
    state=ModelState.READY,
    spec=SPEC,
    devices=["cpu"],
    memory_mb=300,
    context_length=4096,
    in_flight=1,
    queued=0,
    last_used=1764000000.0,
)
ESTIMATE = EstimateDetail(
    format="gguf",
    weights_mb=200,
    kv_cache_mb=80,
    overhead_mb=20,
    total_mb=300,
    embedding_mb=10,
    n_layer=30,
    n_head_kv=3,
    kv_heads_total=90,
    key_length=64,
    value_length=64,
    kv_tokens=4096,
    kv_dtype_bytes=2,
    n_vocab=49152,
    overridden=False,
)
INCOMPATIBLE = "neuron speaks contract 2.0; this gateway speaks 1.x"


def node_status(contract: str = CONTRACT_VERSION, *models: ModelStatus) -> NodeStatus:
    return NodeStatus(contract=contract, node="n", devices=[CPU], models=list(models))


# -- the types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        Health(),
        node_status(CONTRACT_VERSION, MODEL),
        ModelList(models=[MODEL]),
        EstimateAnswer(id="m", memory_mb=300, estimate=ESTIMATE),
        UnloadRequest(id="m"),
        UnloadAnswer(id="m"),
        FaultRequest(model="m", kind="hang"),
        FaultAnswer(model="m", kind="hang"),
        TokenCount(count=7),
        GenerationReport(prompt_tokens=9, completion_tokens=3, cached_tokens=0, ttft_ms=12.5),
        GenerationReport(prompt_tokens=9, completion_tokens=0, cached_tokens=0, ttft_ms=None),
    ],
)
def test_every_answer_round_trips(answer: BaseModel) -> None:
    assert type(answer).model_validate_json(answer.model_dump_json()) == answer


def test_wire_names_stay_what_operators_read() -> None:
    """Fields may be added (a minor version), never renamed: these names all stay."""
    status = json.loads(node_status(CONTRACT_VERSION, MODEL).model_dump_json())
    assert status.keys() >= {"contract", "node", "devices", "models"}
    assert status["contract"] == "1.4"
    assert status["devices"][0].keys() >= {
        "id",
        "name",
        "memory_total_mb",
        "memory_free_mb",
        "memory_budget_mb",
        "memory_used_by_models_mb",
    }
    model = status["models"][0]
    assert model.keys() >= {
        *("id", "state", "spec", "devices", "memory_mb", "context_length"),
        *("in_flight", "queued", "last_used", "prefix_digest"),
    }
    assert model["state"] == "ready" and model["spec"] == SPEC.model_dump()
    assert json.loads(Health().model_dump_json()) == {"status": "ok", "contract": "1.4"}
    assert json.loads(UnloadAnswer(id="m").model_dump_json()) == {"id": "m", "unloaded": True}
    assert json.loads(FaultAnswer(model="m", kind="hang").model_dump_json()) == {
        "model": "m",
        "kind": "hang",
        "armed": True,
    }


def test_a_newer_minor_neuron_is_read_and_its_new_fields_ignored() -> None:
    body = json.loads(node_status("1.7", MODEL).model_dump_json())
    body["uptime_s"] = 5
    body["models"][0]["spec"]["draft_model"] = "x"  # a spec key this side does not know
    body["models"][0]["spec"]["sampling"] = {"temperature": 0.5, "xtc_probability": 0.1}
    body["models"][0]["sampling_defaults"] = {"top_k": 20, "mirostat": 2}
    status = NodeStatus.model_validate(body)
    assert status.models[0].spec == SPEC.model_copy(
        update={"sampling": SamplingDefaults(temperature=0.5)}
    )
    assert status.models[0].sampling_defaults == SamplingDefaults(top_k=20)
    assert incompatibility(status.contract) is None


def test_only_the_contract_major_decides() -> None:
    assert incompatibility("1.0") is None and incompatibility("1.12") is None
    assert incompatibility("2.0") == INCOMPATIBLE
    assert "no contract version" in (incompatibility(None) or "")


# -- the gateway reads neurons only through the types -------------------------------------


async def serve_status(body: Any) -> TestServer:
    async def status(_: web.Request) -> web.Response:
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/status", status)
    server = TestServer(app)
    await server.start_server()
    return server


async def poll_http(body: Any) -> Fleet:
    """One poll of a neuron named ``a`` that answers ``/status`` with ``body``."""
    server = await serve_status(body)
    endpoint = NeuronEndpoint(name="a", endpoint=str(server.make_url("")).rstrip("/"))
    fleet = Fleet([endpoint], down_after_misses=1)
    try:
        async with aiohttp.ClientSession() as session:
            clients = {"a": HttpNeuronClient(endpoint, session)}
            poller = Poller(fleet, clients, 1.0, GatewayMetrics(CollectorRegistry()))
            await poller.poll_once()
    finally:
        await server.close()
    return fleet


async def test_a_valid_answer_is_recorded_typed() -> None:
    fleet = await poll_http(json.loads(node_status(CONTRACT_VERSION, MODEL).model_dump_json()))
    node = fleet.nodes["a"]
    assert node.usable and node.error is None and node.contract == "1.4"
    assert node.models == {"m": MODEL} and node.devices == [CPU]
    assert [n.name for n in fleet.holders("m")] == ["a"]


async def test_an_invalid_answer_is_a_node_error_naming_the_field() -> None:
    body = json.loads(node_status(CONTRACT_VERSION, MODEL).model_dump_json())
    body["models"][0]["in_flight"] = None
    fleet = await poll_http(body)
    node = fleet.nodes["a"]
    assert node.error is not None
    assert node.error.startswith(
        "node 'a' answered /status with an invalid body: "
        "models.0.in_flight: Input should be a valid integer"
    )
    assert not node.up and fleet.holders("m") == []  # never a silent 0
    view = node.view()
    assert view.error == node.error


async def test_an_unknown_state_or_not_an_object_is_invalid_too() -> None:
    body = json.loads(node_status(CONTRACT_VERSION, MODEL).model_dump_json())
    body["models"][0]["state"] = "sleeping"
    assert "models.0.state: Input should be" in ((await poll_http(body)).nodes["a"].error or "")
    assert (await poll_http("hello")).nodes["a"].error == (
        "node 'a' answered /status with an invalid body: not a JSON object"
    )


@pytest.mark.parametrize(
    ("contract", "reason"),
    [("2.0", INCOMPATIBLE), (None, incompatibility(None))],
)
async def test_another_major_over_http_is_incompatible_whatever_else_it_sends(
    contract: str | None, reason: str
) -> None:
    body: dict[str, Any] = {"node": "a", "gpus": "a shape of version 2"}
    if contract is not None:
        body["contract"] = contract
    fleet = await poll_http(body)
    node = fleet.nodes["a"]
    assert node.up and not node.compatible and not node.usable
    assert node.error == reason and node.contract == contract
    view = node.view()
    assert (view.up, view.compatible, view.error) == (True, False, reason)


# -- an incompatible neuron is never used ----------------------------------------------------


class StaticNeuron:
    """A ``NeuronClient`` whose ``/status`` is fixed; it records what it is asked."""

    def __init__(self, status: NodeStatus) -> None:
        self.answer = status
        self.asked: list[str] = []

    async def status(self, timeout_s: float) -> NodeStatus:
        return self.answer

    async def load(self, spec: ModelSpec, timeout_s: float = 1800) -> LoadAnswer:
        self.asked.append(f"load {spec.id}")
        return LoadAnswer(**MODEL.model_copy(update={"id": spec.id, "spec": spec}).model_dump())

    async def estimate(self, spec: ModelSpec, timeout_s: float = 60) -> EstimateAnswer:
        self.asked.append(f"estimate {spec.id}")
        return EstimateAnswer(id=spec.id, memory_mb=300, estimate=ESTIMATE)

    async def unload(self, model_id: str, timeout_s: float = 120) -> UnloadAnswer:
        self.asked.append(f"unload {model_id}")
        return UnloadAnswer(id=model_id)

    async def open_stream(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> UpstreamResponse:
        raise NotImplementedError


def endpoints(*names: str) -> list[NeuronEndpoint]:
    return [NeuronEndpoint(name=name, endpoint=f"http://{name}:1") for name in names]


def scheduler_over(
    neurons: dict[str, StaticNeuron], profiles: list[ModelSpec]
) -> tuple[Scheduler, Fleet]:
    """A scheduler over ``neurons``, each polled once."""
    fleet = Fleet(endpoints(*neurons), down_after_misses=1)
    for name, neuron in neurons.items():
        fleet.record_status(name, neuron.answer)

    async def refresh(_: str) -> None:
        return None

    metrics = GatewayMetrics(CollectorRegistry())
    scheduler = Scheduler(fleet, Catalogue(profiles), neurons, EvictionSection(), metrics, refresh)
    return scheduler, fleet


async def test_an_incompatible_holder_is_not_routed_to() -> None:
    old, new = StaticNeuron(node_status("1.0", MODEL)), StaticNeuron(node_status("2.0", MODEL))
    scheduler, fleet = scheduler_over({"old": old, "new": new}, [])
    assert [n.name for n in fleet.holders("m")] == ["old"]
    assert fleet.nodes["new"].error == INCOMPATIBLE and fleet.nodes["new"].models == {}
    assert fleet.loaded_on("m") == ["old"]
    for _ in range(3):
        node = await scheduler.acquire("m")
        assert node.name == "old"
        scheduler.release(node, "m")


async def test_an_incompatible_node_is_not_asked_nor_placed_on() -> None:
    profile = SPEC.model_copy(update={"id": "cold", "pinned": False})
    new = StaticNeuron(node_status("2.0"))
    scheduler, _ = scheduler_over({"new": new}, [profile])
    with pytest.raises(CortexError, match="No reachable node may load 'cold'"):
        await scheduler.acquire("cold")
    assert new.asked == []
    # a compatible node beside it takes the load
    old = StaticNeuron(node_status("1.0"))
    scheduler, _ = scheduler_over({"new": new, "old": old}, [profile])
    assert (await scheduler.acquire("cold")).name == "old"
    assert old.asked == ["estimate cold", "load cold"] and new.asked == []


def test_a_model_being_evicted_shows_the_gateways_own_phase() -> None:
    fleet = Fleet(endpoints("a"), down_after_misses=1)
    fleet.record_status("a", node_status("1.0", MODEL))
    fleet.nodes["a"].leaving.add("m")
    assert fleet.nodes["a"].phase("m") is GatewayPhase.UNLOADING
    (model,) = fleet.nodes["a"].view().models
    assert model.state == "unloading" and model.pinned and model.priority == 70
    assert fleet.holders("m") == []


# -- the whole gateway, over in-memory neurons -------------------------------------------------


def test_fleet_and_models_show_an_incompatible_node_with_its_reason() -> None:
    neurons: dict[str, NeuronClient] = {
        "a": StaticNeuron(node_status("1.0", MODEL)),
        "b": StaticNeuron(node_status("2.0")),
    }
    config = GatewayConfig(neurons=endpoints("a", "b"))
    app = create_app(
        config,
        ModelsConfig(models=[SPEC]),
        CollectorRegistry(),
        clients=lambda endpoint: neurons[endpoint.name],
    )
    with TestClient(app) as client:
        fleet = FleetView.model_validate(client.get("/fleet").json())
        listed = ModelListing.model_validate(client.get("/v1/models").json())
    a, b = fleet.nodes
    assert (a.name, a.up, a.compatible, a.error, a.contract) == ("a", True, True, None, "1.0")
    assert [(m.id, m.state, m.in_flight) for m in a.models] == [("m", "ready", 1)]
    assert (b.name, b.up, b.compatible, b.error, b.contract) == (
        "b",
        True,
        False,
        INCOMPATIBLE,
        "2.0",
    )
    assert b.models == [] and b.devices == []
    (model,) = fleet.models
    assert model.loaded_on == ["a"] and [(p.node, p.state) for p in model.placements] == [
        ("a", "ready")
    ]
    assert [(m.id, m.loaded_on) for m in listed.data] == [("m", ["a"])]


# -- an older neuron still loads what it can -------------------------------------------------


class _FirstSpec(BaseModel):
    """The spec keys a contract-1.0 neuron knew, refusing any other as ModelSpec does."""

    model_config = ConfigDict(extra="forbid")

    id: str
    source: str
    quant: str | None = None
    tensor_parallel: int = 1
    context_length: int = 4096
    max_batch: int = 4
    pinned: bool = False
    priority: int = 50
    nodes: list[str] = Field(default_factory=list)
    aliases: list[str] = Field(default_factory=list)
    memory_mb: int | None = None


async def load_on_first_neuron(spec: ModelSpec) -> LoadAnswer:
    """``spec`` loaded over HTTP on a neuron that validates loads with ``_FirstSpec``."""

    async def load(request: web.Request) -> web.Response:
        try:
            known = _FirstSpec.model_validate(await request.json())
        except ValidationError as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=422)
        answer = MODEL.model_copy(update={"id": known.id, "spec": spec})
        return web.json_response(json.loads(answer.model_dump_json()))

    app = web.Application()
    app.router.add_post("/models/load", load)
    server = TestServer(app)
    await server.start_server()
    endpoint = NeuronEndpoint(name="a", endpoint=str(server.make_url("")).rstrip("/"))
    try:
        async with aiohttp.ClientSession() as session:
            return await HttpNeuronClient(endpoint, session).load(spec)
    finally:
        await server.close()


async def test_an_older_neuron_loads_a_spec_that_leaves_newer_keys_at_their_defaults() -> None:
    answer = await load_on_first_neuron(SPEC)  # every later key at its default
    assert answer.id == "m"


async def test_an_older_neuron_refuses_a_newer_key_the_spec_really_sets() -> None:
    with pytest.raises(CortexError) as refused:
        await load_on_first_neuron(SPEC.model_copy(update={"kv_cache_type": "q8_0"}))
    assert "kv_cache_type" in refused.value.message
