"""Fleet management over three real neurons with small memory budgets and one real gateway:
cold loads, eviction policies, placement limits, node and session affinity, idle unloads.

The bundled GGUF under several ids is the whole catalogue; its memory estimate at a
small context sets each neuron's budget to hold three such models and no more.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cortex.neuron.files.estimate import estimate_memory
from cortex.neuron.files.sources import parse_source, resolve_local
from cortex.spec import ModelSpec
from procs import BUNDLED, UNENDING, Gateway, Neuron, first_token, toml_table, wait_for
from procs import metric as procs_metric

pytestmark = pytest.mark.slow

SMALL = {"context_length": 512, "max_batch": 1}
HI = [{"role": "user", "content": "Say hi."}]
LONG = {"role": "user", "content": "Write a very long essay about rivers."}
NODES = ("n1", "n2", "n3")


def profile(model_id: str, **fields: object) -> str:
    return toml_table("models", {"id": model_id, "source": BUNDLED, **SMALL, **fields})


@pytest.fixture(scope="module")
def small_mb() -> int:
    path = resolve_local(parse_source(BUNDLED), None)
    return estimate_memory(path, ModelSpec(id="x", source=BUNDLED, **SMALL)).total_mb


@pytest.fixture(scope="module")
def neurons(tmp_path_factory: pytest.TempPathFactory, small_mb: int) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("fleet")
    budget = str(int(small_mb * 3.5))
    started = {name: Neuron(tmp, name, extra=["--memory-budget-mb", budget]) for name in NODES}
    yield started
    for neuron in started.values():
        neuron.stop()


@pytest.fixture
def fleet(neurons: dict, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Starts a gateway over the three neurons, each emptied first; stops it afterwards."""
    for neuron in neurons.values():
        for model in neuron.status()["models"]:
            httpx.post(neuron.url + "/models/unload", json={"id": model["id"]}, timeout=30)
    started: list[Gateway] = []

    def start(
        models: str,
        eviction: str = "",
        wait_for: set[str] | None = None,
        poll_interval_s: float = 0.5,
    ) -> Gateway:
        entries = "".join(
            f'[[neurons]]\nname = "{name}"\nendpoint = "{n.url}"\n\n' for name, n in neurons.items()
        )
        config = (
            f"[gateway]\npoll_interval_s = {poll_interval_s}\nstream_keepalive_s = 0.05\n\n"
            f"[eviction]\n{eviction}\n\n{entries}"
        )
        gateway = Gateway(tmp_path, config, models, wait_for)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def ask(gateway: Gateway, model: str, messages: list | None = None, **headers: str) -> str:
    """One short chat completion; returns the node that served it."""
    reply = client(gateway).chat.completions.with_raw_response.create(
        model=model, messages=messages or HI, max_tokens=4, extra_headers=headers or None
    )
    assert reply.parse().choices[0].message.content is not None
    return reply.headers["x-cortex-node"]


def placements(gateway: Gateway) -> dict[str, set[str]]:
    fleet = httpx.get(gateway.url + "/fleet", timeout=5).json()
    return {node["name"]: {m["id"] for m in node["models"]} for node in fleet["nodes"]}


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_concurrent_requests_for_a_cold_model_cause_one_load(fleet) -> None:
    gateway = fleet(profile("cold"))
    assert placements(gateway) == {name: set() for name in NODES}
    with ThreadPoolExecutor(10) as pool:
        served = list(pool.map(lambda _: ask(gateway, "cold"), range(10)))
    assert len(set(served)) == 1
    assert metric(gateway, "cortex_model_loads_total", model="cold", result="ok") == 1
    where = [name for name, models in placements(gateway).items() if "cold" in models]
    assert where == served[:1]


def test_a_cold_load_is_not_counted_as_gateway_overhead(fleet) -> None:
    gateway = fleet(profile("cold-overhead"))
    reply = client(gateway).chat.completions.with_raw_response.create(
        model="cold-overhead", messages=HI, max_tokens=4
    )
    load_s = metric(gateway, "cortex_model_load_duration_seconds_sum", model="cold-overhead")
    assert load_s > 0
    # the request waited for the whole load; the gateway's own share excludes it
    assert 0 <= float(reply.headers["x-cortex-overhead-ms"]) / 1000 < load_s


def test_a_stream_waiting_on_a_load_gets_keepalive_comments(fleet) -> None:
    gateway = fleet(profile("streamed"))
    body = {"model": "streamed", "messages": HI, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[0] == ": loading streamed"
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and len(data) >= 3
    # and the official SDK, which must skip the comments, reads a stream the same way
    stream = client(gateway).chat.completions.create(
        model="streamed", messages=HI, max_tokens=4, stream=True
    )
    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in stream)


def test_an_ollama_stream_waiting_on_a_load_gets_empty_chunks(fleet) -> None:
    gateway = fleet(profile("ollama-cold") + profile("pulled"))
    ollama_client = ollama.Client(host=gateway.url, timeout=60)
    parts = list(
        ollama_client.chat(
            model="ollama-cold", messages=HI, options={"num_predict": 4}, stream=True
        )
    )
    # an NDJSON client cannot skip an SSE comment: it waits on chunks that add nothing
    assert parts[0].message.content == "" and not parts[0].done
    assert "".join(p.message.content or "" for p in parts) and parts[-1].done
    load_s = metric(gateway, "cortex_model_load_duration_seconds_sum", model="ollama-cold")
    assert (parts[-1].load_duration or 0) >= 0.9 * load_s * 1e9 > 0  # the load, measured
    assert metric(gateway, "cortex_requests_total", model="ollama-cold", dialect="ollama") == 1
    # a pull reports the load as it runs, then loads nothing more
    progress = [p.status for p in ollama_client.pull("pulled", stream=True)]
    assert progress[0] == "pulling manifest" and progress[-1] == "success"
    assert "loading pulled" in progress
    assert any("pulled" in models for models in placements(gateway).values())


def test_ollama_keep_alive_sets_when_its_model_unloads(fleet) -> None:
    gateway = fleet(profile("kept"))
    ollama_client = ollama.Client(host=gateway.url, timeout=60)

    def loaded() -> bool:
        return any("kept" in models for models in placements(gateway).values())

    # an empty prompt loads the model, as `ollama run` does
    assert ollama_client.generate(model="kept", prompt="").done_reason == "load"
    assert loaded()
    (running,) = ollama_client.ps().models
    assert running.expires_at is not None and running.expires_at.year == 9999  # no idle unload
    ollama_client.chat(model="kept", messages=HI, options={"num_predict": 2}, keep_alive="1h")
    (running,) = ollama_client.ps().models
    assert running.expires_at is not None
    left_s = running.expires_at.timestamp() - time.time()
    assert 3500 < left_s <= 3600
    # keep_alive 0: unloaded once the answer is done
    answer = ollama_client.chat(model="kept", messages=HI, options={"num_predict": 2}, keep_alive=0)
    assert answer.done
    wait_for(lambda: not loaded(), "the model unloaded after its answer", timeout_s=15)
    # `ollama stop`: an empty prompt with keep_alive 0 unloads at once
    assert ollama_client.generate(model="kept", prompt="").done_reason == "load"
    assert ollama_client.generate(model="kept", prompt="", keep_alive=0).done_reason == "unload"
    assert not loaded()


def test_lru_evicts_the_least_recently_used_and_never_a_pinned_model(fleet) -> None:
    models = "".join(
        profile(name, nodes=["n1"], pinned=name == "keep") for name in ("keep", "a", "b", "c")
    )
    gateway = fleet(models, 'strategy = "lru"', wait_for={"keep"})
    for name in ("a", "b", "a"):  # b is now the least recently used, keep the oldest
        assert ask(gateway, name) == "n1"
    assert placements(gateway)["n1"] == {"keep", "a", "b"}
    assert ask(gateway, "c") == "n1"
    assert placements(gateway)["n1"] == {"keep", "a", "c"}
    assert metric(gateway, "cortex_model_evictions_total", model="b", reason="capacity") == 1
    assert metric(gateway, "cortex_model_evictions_total", model="keep") == 0


def test_priority_evicts_the_lowest_priority_first(fleet) -> None:
    priorities = {"high": 90, "low": 10, "mid": 50, "new": 50}
    models = "".join(profile(name, nodes=["n1"], priority=p) for name, p in priorities.items())
    gateway = fleet(models, 'strategy = "priority"')
    for name in ("high", "mid", "low"):  # low is the most recently used
        ask(gateway, name)
    ask(gateway, "new")
    assert placements(gateway)["n1"] == {"high", "mid", "new"}
    assert metric(gateway, "cortex_model_evictions_total", model="low") == 1


def test_a_model_with_a_request_in_flight_is_not_evicted(fleet) -> None:
    priorities = {"busy": 0, "b": 90, "c": 90, "d": 50}
    models = "".join(profile(name, nodes=["n1"], priority=p) for name, p in priorities.items())
    gateway = fleet(models, 'strategy = "priority"')
    for name in ("busy", "b", "c"):
        ask(gateway, name)
    long = client(gateway).chat.completions.create(
        model="busy",
        messages=[LONG],
        max_tokens=400,
        stream=True,
    )
    first = next(iter(long))  # generating now: "busy" has a request in flight
    assert first.choices
    ask(gateway, "d")  # busy has the lowest priority, but b goes instead
    assert placements(gateway)["n1"] == {"busy", "c", "d"}
    text = "".join(chunk.choices[0].delta.content or "" for chunk in long if chunk.choices)
    assert text  # the stream went on to its end, untouched by the eviction


def test_node_affinity_is_respected(fleet) -> None:
    gateway = fleet(profile("pinned-to-n3", nodes=["n3"]))
    assert ask(gateway, "pinned-to-n3") == "n3"


def test_a_model_too_big_for_any_node_is_a_clear_error(fleet, small_mb: int) -> None:
    gateway = fleet(profile("huge", context_length=32768, max_batch=8))
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        ask(gateway, "huge")
    message = caught.value.message
    assert "'huge' needs about" in message and "largest slot" in message
    assert caught.value.body["code"] == "model_too_large"
    assert placements(gateway) == {name: set() for name in NODES}


def test_a_conversation_stays_on_the_node_that_holds_its_prefix(fleet) -> None:
    # two sequences at once, so the follow-up runs beside the long answer, not after it
    gateway = fleet(profile("chat", nodes=["n1", "n2"], max_batch=2))
    for node in ("n1", "n2"):
        loaded = httpx.post(
            gateway.url + "/fleet/load", json={"model": "chat", "node": node}, timeout=60
        )
        assert loaded.status_code == 200, loaded.text
    opening = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    home = ask(gateway, "chat", opening)
    # the same conversation asks for a long answer: its node becomes the busier one
    busy = client(gateway).chat.completions.with_raw_response.create(
        model="chat",
        messages=[*opening, {"role": "assistant", "content": "Hello."}, LONG],
        max_tokens=400,
        stream=True,
    )
    assert busy.headers["x-cortex-node"] == home
    chunks = busy.parse()
    next(iter(chunks))
    follow_up = [*opening, {"role": "assistant", "content": "Hello."}, HI[0]]
    assert ask(gateway, "chat", follow_up) == home
    other = "n2" if home == "n1" else "n1"
    assert ask(gateway, "chat", [{"role": "user", "content": "A new topic."}]) == other
    chunks.close()


def test_idle_models_are_unloaded_but_pinned_ones_stay(fleet) -> None:
    models = profile("idle") + profile("keep", pinned=True)
    gateway = fleet(models, "idle_unload_after_s = 1", wait_for={"keep"})
    ask(gateway, "idle")
    # The unload ends with its count (a poll of the node may show it gone a moment
    # earlier): wait for the count, with a generous bound.
    wait_for(
        lambda: metric(gateway, "cortex_model_evictions_total", model="idle", reason="idle") == 1,
        "the idle model to be unloaded",
    )
    assert set().union(*placements(gateway).values()) == {"keep"}
    assert ask(gateway, "idle")  # and it comes back on demand


def test_a_client_leaving_during_a_cold_load_leaves_nothing_in_flight(fleet) -> None:
    gateway = fleet(profile("left"))
    body = {"model": "left", "messages": HI, "max_tokens": 200, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert next(r.iter_lines()) == ": loading left"

    def settled() -> bool:
        fleet_view = httpx.get(gateway.url + "/fleet", timeout=5).json()
        models = [m for node in fleet_view["nodes"] for m in node["models"]]
        return bool(models) and all(m["in_flight"] == 0 and m["queued"] == 0 for m in models)

    wait_for(settled, "no request counted in flight")


def test_defrag_moves_idle_models_so_one_node_is_free_in_one_piece(fleet) -> None:
    models = (
        profile("a")
        + profile("b")
        + profile("p1", pinned=True, nodes=["n3"])
        + profile("p2", pinned=True, nodes=["n3"])
    )
    gateway = fleet(models, "defrag_after_cycles = 0", wait_for={"p1", "p2"})
    for model, node in (("a", "n1"), ("b", "n2")):
        answer = httpx.post(
            gateway.url + "/fleet/load", json={"model": model, "node": node}, timeout=60
        )
        assert answer.status_code == 200, answer.text
    # n1 and n2 each hold one small model; the largest free slot is 2.5 models wide
    moved = httpx.post(gateway.url + "/fleet/defrag", timeout=60).json()["moved"]
    assert moved == 1
    after = placements(gateway)
    assert after["n1"] == set()  # 3.5 models wide now
    assert "a" in after["n2"] | after["n3"] and "b" in after["n2"]
    assert ask(gateway, "a") != "n1"
    assert metric(gateway, "cortex_model_evictions_total", model="a", reason="defrag") == 1


def model_view(gateway: Gateway, node: str, model: str) -> dict | None:
    fleet = httpx.get(gateway.url + "/fleet", timeout=5).json()
    (entry,) = [n for n in fleet["nodes"] if n["name"] == node]
    return next((m for m in entry["models"] if m["id"] == model), None)


def test_defrag_runs_by_itself_every_defrag_after_cycles(fleet) -> None:
    models = (
        "".join(profile(name, nodes=["n1"]) for name in ("x1", "x2", "x3", "x4"))
        + profile("a")
        + profile("p1", pinned=True, nodes=["n3"])
        + profile("p2", pinned=True, nodes=["n3"])
    )
    gateway = fleet(models, "defrag_after_cycles = 2", wait_for={"p1", "p2"})
    loaded = httpx.post(gateway.url + "/fleet/load", json={"model": "a", "node": "n2"}, timeout=60)
    assert loaded.status_code == 200, loaded.text
    for name in ("x1", "x2", "x3"):  # n1 full; only n2's "a" could move (x* stay on n1)
        assert ask(gateway, name) == "n1"

    def cycles() -> int:
        return httpx.get(gateway.url + "/fleet", timeout=5).json()["eviction"]["cycles"]

    assert cycles() == 0
    assert ask(gateway, "x4") == "n1"  # evicts x1: the first eviction cycle
    assert cycles() == 1
    assert placements(gateway)["n2"] == {"a"}  # one cycle of two: no defrag yet
    assert ask(gateway, "x1") == "n1"  # evicts x2: the second cycle, and a defrag
    assert cycles() == 2
    # the defrag runs in the background: its move ends with the unload it counts
    wait_for(
        lambda: metric(gateway, "cortex_model_evictions_total", model="a", reason="defrag") == 1,
        "the defrag to move a",
    )
    assert placements(gateway) == {"n1": {"x3", "x4", "x1"}, "n2": set(), "n3": {"p1", "p2", "a"}}
    assert metric(gateway, "cortex_model_evictions_total", reason="capacity") == 2


def test_requests_past_max_queue_waiting_on_a_cold_load_are_refused(fleet, neurons) -> None:
    """``max_queue`` requests wait on a load; the next is a 429 (OpenAI) or 529
    (Anthropic) with Retry-After. The load is held by stopping the neuron (SIGSTOP),
    so the queue stays full for as long as the test looks at it."""
    # a long poll interval: the paused neuron is not polled (and marked down) meanwhile
    gateway = fleet(profile("slow", nodes=["n1"], max_queue=2), poll_interval_s=60)
    metrics_url = f"http://127.0.0.1:{gateway.metrics_port}/metrics"
    node = neurons["n1"]
    node.signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(ask, gateway, "slow") for _ in range(2)]
            wait_for(
                lambda: procs_metric(metrics_url, "cortex_queue_depth", model="slow") == 2,
                "two requests waiting on the load",
            )
            chat = {"model": "slow", "messages": HI, "max_tokens": 4}
            refused = httpx.post(gateway.url + "/v1/chat/completions", json=chat, timeout=30)
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["type"] == "rate_limit_error"
            assert "'slow'" in refused.json()["error"]["message"]
            message = {"model": "slow", "messages": HI, "max_tokens": 4}
            overloaded = httpx.post(gateway.url + "/v1/messages", json=message, timeout=30)
            assert overloaded.status_code == 529, overloaded.text
            assert int(overloaded.headers["retry-after"]) >= 1
            assert overloaded.json()["type"] == "error"
            assert overloaded.json()["error"]["type"] == "overloaded_error"
            assert not any(request.done() for request in waiting)
            node.signal(signal.SIGCONT)
            assert [request.result(timeout=120) for request in waiting] == ["n1", "n1"]
    finally:
        node.signal(signal.SIGCONT)
    assert metric(gateway, "cortex_model_loads_total", model="slow") == 1
    assert procs_metric(metrics_url, "cortex_queue_depth", model="slow") == 0


def test_a_model_that_fits_once_busy_models_finish_is_a_503(fleet, small_mb: int) -> None:
    """The only node the model may use is full of a model with a request in flight:
    not a 422 (it fits once that finishes), a 503 with Retry-After; then it loads."""
    three = int(small_mb * 3)  # one such model per node (budget: 3.5 small models)
    models = profile("hog", nodes=["n1"], memory_mb=three) + profile(
        "next", nodes=["n1"], memory_mb=three
    )
    gateway = fleet(models)
    assert ask(gateway, "hog") == "n1"
    body = {"model": "hog", "messages": [LONG], "max_tokens": 2000, "stream": True, **UNENDING}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read().decode()
        lines = r.iter_lines()  # kept: a dropped iterator closes the stream
        first_token(lines)  # "hog" is generating: busy, so it may not be evicted
        chat = {"model": "next", "messages": HI, "max_tokens": 4}
        refused = httpx.post(gateway.url + "/v1/chat/completions", json=chat, timeout=60)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == "no_memory_now" and "'next'" in error["message"]
        message = {"model": "next", "messages": HI, "max_tokens": 4}
        answer = httpx.post(gateway.url + "/v1/messages", json=message, timeout=60)
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.json()["error"]["type"] == "overloaded_error"
        assert placements(gateway)["n1"] == {"hog"}
    # the client left: once "hog" is idle, "next" evicts it
    wait_for(lambda: model_view(gateway, "n1", "hog")["in_flight"] == 0, "hog to be idle")
    assert ask(gateway, "next") == "n1"
    assert placements(gateway)["n1"] == {"next"}
