"""Faults injected into real loaded models: the neuron heals itself, the gateway routes around.

Each fault kind (``device_error``, ``hang``, ``segfault``, ``abort``, ``kill``) is armed through
``POST /debug/fault`` and fires on the model's next decode step. The request that
meets it fails cleanly, every request until the reload gets 503 + Retry-After
saying the model is recovering, and then the model answers exactly as before,
with nobody calling anything.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from procs import BATCH_STABLE, BUNDLED, MODEL, Gateway, Neuron, gateway_config
from reference import gguf_path

pytestmark = pytest.mark.slow

FAULTS = ["--enable-fault-injection"]
# A short watchdog deadline, for the hang tests: still far above a step of this model on
# a busy 2-core machine. The gateway tests keep the default (60 s): a step slowed by a
# loaded machine must never count as a hang there.
DEADLINE_S = 5
SHORT_DEADLINE = [*FAULTS, "--step-deadline-s", str(DEADLINE_S)]
PROMPT = [{"role": "user", "content": "Name three colours."}]
GREEDY = {"temperature": 0, "max_tokens": 12}


def chat(url: str, model: str = MODEL, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"model": model, "messages": PROMPT, **GREEDY}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def answer(url: str, model: str = MODEL) -> str:
    response = chat(url, model)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def inject(node: Neuron, kind: str, model: str = MODEL) -> None:
    response = httpx.post(node.url + "/debug/fault", json={"model": model, "kind": kind})
    assert response.status_code == 200, response.text


def recoveries(node: Neuron, model: str, result: str) -> float:
    text = httpx.get(node.url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "neuron_recoveries_total" and sample.labels == {
                "model": model,
                "result": result,
            }:
                return sample.value
    return 0.0


def assert_recovering(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert "recovering" in response.json()["error"]["message"]


def until_ready(node: Neuron, model: str = MODEL, timeout_s: float = 60) -> list[httpx.Response]:
    """Requests sent until one succeeds; every refusal before it must be a 'recovering'."""
    refused = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = chat(node.url, model)
        if response.status_code == 200:
            return refused
        assert_recovering(response)
        refused.append(response)
        time.sleep(0.05)
    raise AssertionError(f"{model} not ready after {timeout_s}s\n{node.log_tail()}")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    # answers before a fault (cold) and after (cached) are compared: batch-stable
    process = Neuron(
        tmp_path_factory.mktemp("healing"),
        "h1",
        [f"{MODEL}={BUNDLED}"],
        SHORT_DEADLINE,
        spec_fields=BATCH_STABLE,
    )
    yield process
    process.stop()


@pytest.mark.parametrize("kind", ["device_error", "hang", "segfault", "abort", "kill"])
def test_a_fault_heals_by_itself_and_answers_stay_the_same(node: Neuron, kind: str) -> None:
    before = answer(node.url)
    healed = recoveries(node, MODEL, "ok")
    inject(node, kind)
    started = time.monotonic()
    assert_recovering(chat(node.url))  # the request that meets the fault
    if kind == "hang":  # it waited for the watchdog, not forever
        assert time.monotonic() - started >= DEADLINE_S
    until_ready(node)
    assert recoveries(node, MODEL, "ok") == healed + 1
    assert node.model(MODEL)["state"] == "ready"
    assert answer(node.url) == before


def test_a_stream_meeting_a_fault_ends_with_an_error_not_a_hang(node: Neuron) -> None:
    before = answer(node.url)
    inject(node, "hang")
    client = openai.OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0)
    stream = client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True, **GREEDY)
    with pytest.raises(openai.APIError, match="recovering"):
        for _ in stream:
            pass
    until_ready(node)
    assert answer(node.url) == before


def test_a_failed_reload_leaves_the_model_unloaded_and_a_later_load_works(
    node: Neuron, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.gguf"
    shutil.copy(gguf_path(), copy)
    spec = {"id": "copy", "source": f"file:{copy}", "context_length": 512, "max_batch": 1}
    loaded = httpx.post(node.url + "/models/load", json=spec, timeout=60)
    assert loaded.status_code == 200, loaded.text
    before = answer(node.url, "copy")
    copy.rename(tmp_path / "elsewhere.gguf")
    inject(node, "device_error", "copy")
    assert_recovering(chat(node.url, "copy"))
    deadline = time.monotonic() + 30
    while node.model("copy") is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert node.model("copy") is None, "a failed reload must unload, not poison forever"
    assert recoveries(node, "copy", "failed") == 1
    assert chat(node.url, "copy").status_code == 404
    assert node.model(MODEL)["state"] == "ready"  # the other model never noticed
    (tmp_path / "elsewhere.gguf").rename(copy)
    loaded = httpx.post(node.url + "/models/load", json=spec, timeout=60)
    assert loaded.status_code == 200, loaded.text
    assert answer(node.url, "copy") == before
    httpx.post(node.url + "/models/unload", json={"id": "copy"}, timeout=30)


def test_fault_injection_is_off_unless_asked_for(neuron: Neuron) -> None:
    response = httpx.post(neuron.url + "/debug/fault", json={"model": MODEL, "kind": "hang"})
    assert response.status_code == 404


def test_an_unknown_fault_kind_is_a_clear_400(node: Neuron) -> None:
    response = httpx.post(node.url + "/debug/fault", json={"model": MODEL, "kind": "meteor"})
    assert response.status_code == 400
    assert "device_error" in response.json()["error"]["message"]


def _gateway(tmp_path: Path, nodes: list[Neuron]) -> Gateway:
    return Gateway(tmp_path, gateway_config(*nodes), "", {MODEL})


def test_the_gateway_serves_from_another_node_while_one_recovers(tmp_path: Path) -> None:
    spec = [f"{MODEL}={BUNDLED}"]
    a, b = Neuron(tmp_path, "a", spec, FAULTS), Neuron(tmp_path, "b", spec, FAULTS)
    gateway = _gateway(tmp_path, [a, b])
    session = {"x-session-id": "pinned"}  # affinity: the follow-up goes to the same node
    try:
        first = chat(gateway.url, headers=session)
        assert first.status_code == 200, first.text
        before = first.json()["choices"][0]["message"]["content"]
        pinned = {"a": a, "b": b}[first.headers["x-cortex-node"]]
        inject(pinned, "device_error")
        served = chat(gateway.url, headers=session)
        assert served.status_code == 200, served.text
        assert served.headers["x-cortex-node"] != pinned.name
        assert served.json()["choices"][0]["message"]["content"] == before
        until_ready(pinned)
        assert recoveries(pinned, MODEL, "ok") == 1
    finally:
        gateway.stop()
        a.stop()
        b.stop()


def test_with_no_other_node_the_client_gets_503_retry_after_in_its_dialect(
    tmp_path: Path,
) -> None:
    a = Neuron(tmp_path, "a", [f"{MODEL}={BUNDLED}"], FAULTS)
    gateway = _gateway(tmp_path, [a])
    try:
        inject(a, "device_error")
        assert_recovering(chat(gateway.url))
        until_ready(a)
        inject(a, "device_error")
        client = anthropic.Anthropic(base_url=gateway.url, api_key="none", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as refused:
            client.messages.create(model=MODEL, max_tokens=12, messages=PROMPT)
        assert refused.value.status_code == 503
        assert int(refused.value.response.headers["Retry-After"]) >= 1
        assert refused.value.body["error"]["type"] == "overloaded_error"
        assert "recovering" in refused.value.body["error"]["message"]
        until_ready(a)
    finally:
        gateway.stop()
        a.stop()
