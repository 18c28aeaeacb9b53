"""Every model's engine in a process of its own: a native crash costs one model a few
seconds, never the neuron or its other models.

Real neurons, the bundled model twice (two ids, two engine processes), real signals
sent to the engine processes from outside (``kill -SEGV``, ``kill -9``), and the
canary's fallback to safe settings forced by the test hook that makes the optimised
path crash.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest

from procs import (
    BATCH_STABLE,
    BUNDLED,
    MODEL,
    UNENDING,
    Neuron,
    alive,
    children_of,
    metric,
    wait_for,
)

pytestmark = pytest.mark.slow

OTHER = "second"
QUESTION = [{"role": "user", "content": "What is the capital of Japan?"}]
GREEDY = {"temperature": 0, "max_tokens": 16}


def ask(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": QUESTION, **GREEDY}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=120)


def answer(url: str, model: str) -> str:
    response = ask(url, model)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def engine_pid(node: Neuron, model: str) -> int:
    entry = node.model(model)
    assert entry is not None and entry["state"] == "ready", entry
    return int(entry["engine_pid"])


def until_answers(node: Neuron, model: str, timeout_s: float = 120) -> None:
    def answers() -> bool:
        response = ask(node.url, model)
        if response.status_code == 200:
            return True
        # until then: 503 + Retry-After saying it recovers, never a 5xx of another kind
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) >= 1
        return False

    wait_for(answers, f"{model} answers again", timeout_s)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    loads = [f"{MODEL}={BUNDLED}", f"{OTHER}={BUNDLED}"]
    # answers before a crash (cold) and after (cached) are compared: batch-stable
    process = Neuron(tmp_path_factory.mktemp("engines"), "engines", loads, spec_fields=BATCH_STABLE)
    yield process
    process.stop()


def test_each_model_runs_in_an_engine_process_of_its_own(node: Neuron) -> None:
    first, second = engine_pid(node, MODEL), engine_pid(node, OTHER)
    assert first != second
    assert {first, second} <= set(children_of(node.pid))
    assert node.pid not in (first, second)
    for model in (MODEL, OTHER):
        entry = node.model(model)
        assert entry["restarts"] == 0 and entry["last_fault"] is None


def _stream_lines(url: str, model: str, body: dict, lines: list[str]) -> None:
    payload = {"model": model, "messages": QUESTION, "stream": True, **body}
    with httpx.stream("POST", url + "/v1/chat/completions", json=payload, timeout=300) as r:
        lines.extend(line for line in r.iter_lines() if line)


def test_a_segfault_costs_one_model_a_restart_and_nothing_else(node: Neuron) -> None:
    before = answer(node.url, MODEL)
    other_before = answer(node.url, OTHER)
    victim = engine_pid(node, MODEL)
    bystander = engine_pid(node, OTHER)
    faults = metric(node.url + "/metrics", "neuron_engine_faults_total", model=MODEL, kind="crash")

    # A long stream on each model; the victim's engine is killed while both run.
    victim_lines: list[str] = []
    other_lines: list[str] = []
    held = {"max_tokens": 300, "temperature": 0, **UNENDING}
    streams = [
        threading.Thread(target=_stream_lines, args=(node.url, MODEL, held, victim_lines)),
        threading.Thread(
            target=_stream_lines,
            args=(node.url, OTHER, {"max_tokens": 48, "temperature": 0}, other_lines),
        ),
    ]
    for thread in streams:
        thread.start()
    wait_for(lambda: len(victim_lines) > 3, "the victim's stream has started")
    os.kill(victim, signal.SIGSEGV)
    for thread in streams:
        thread.join(300)
        assert not thread.is_alive()

    # The victim's stream ended with an error event, not a hang or a silent cut.
    events = [json.loads(line[6:]) for line in victim_lines if line.startswith("data: {")]
    assert "error" in events[-1], victim_lines[-3:]
    assert "recovering" in events[-1]["error"]["message"]
    # The bystander's stream ran to its end, undisturbed, in the same engine process.
    other_events = [json.loads(line[6:]) for line in other_lines if line.startswith("data: {")]
    assert other_lines[-1] == "data: [DONE]"
    assert all("error" not in event for event in other_events)
    assert engine_pid(node, OTHER) == bystander and alive(bystander)

    until_answers(node, MODEL)
    assert answer(node.url, MODEL) == before
    assert answer(node.url, OTHER) == other_before
    entry = node.model(MODEL)
    assert entry["restarts"] == 1
    assert entry["last_fault"]["kind"] == "crash"
    assert entry["last_fault"]["signal"] == "SIGSEGV"
    assert int(entry["engine_pid"]) != victim and not alive(victim)
    after = metric(node.url + "/metrics", "neuron_engine_faults_total", model=MODEL, kind="crash")
    assert after == faults + 1
    assert metric(node.url + "/metrics", "neuron_engine_restarts_total", model=MODEL) >= 1


def test_a_sigkill_from_outside_heals_the_same_way(node: Neuron) -> None:
    before = answer(node.url, OTHER)
    victim = engine_pid(node, OTHER)
    os.kill(victim, signal.SIGKILL)
    until_answers(node, OTHER)
    assert answer(node.url, OTHER) == before
    entry = node.model(OTHER)
    assert entry["last_fault"]["kind"] == "killed"
    assert entry["last_fault"]["signal"] == "SIGKILL"
    assert node.model(MODEL)["state"] == "ready"


def test_unloading_leaves_no_engine_process_behind(node: Neuron) -> None:
    spec = {"id": "brief", "source": BUNDLED, "context_length": 512, "max_batch": 1}
    loaded = httpx.post(node.url + "/models/load", json=spec, timeout=120)
    assert loaded.status_code == 200, loaded.text
    pid = int(loaded.json()["engine_pid"])
    assert alive(pid)
    assert answer(node.url, "brief")
    unloaded = httpx.post(node.url + "/models/unload", json={"id": "brief"}, timeout=60)
    assert unloaded.status_code == 200
    wait_for(lambda: not alive(pid), "the engine process is gone", 30)


def test_a_client_leaving_while_queued_in_the_engine_frees_its_place(node: Neuron) -> None:
    """With the one batch place taken, a second request waits in the engine process's
    queue; its client leaving takes it out of that queue (cancelled, nothing generated)
    while the running one carries on."""
    spec = {"id": "single", "source": BUNDLED, "context_length": 2048, "max_batch": 1}
    loaded = httpx.post(node.url + "/models/load", json=spec, timeout=120)
    assert loaded.status_code == 200, loaded.text
    cancelled = {"model": "single", "finish": "cancelled"}
    before = metric(node.url + "/metrics", "neuron_requests_total", **cancelled)
    running: list[str] = []
    held = {"max_tokens": 400, "temperature": 0, **UNENDING}
    runner = threading.Thread(target=_stream_lines, args=(node.url, "single", held, running))
    runner.start()
    try:
        wait_for(lambda: len(running) > 3, "the first request is generating")
        body = {"model": "single", "messages": QUESTION, "stream": True, "max_tokens": 8}
        with httpx.stream(
            "POST", node.url + "/v1/chat/completions", json=body, timeout=60
        ) as waiting:
            assert waiting.status_code == 200
            wait_for(lambda: node.model("single")["queued"] == 1, "the second request queued")
            # the client leaves without reading a token
        wait_for(lambda: node.model("single")["queued"] == 0, "its place given back")
        wait_for(
            lambda: (
                metric(node.url + "/metrics", "neuron_requests_total", **cancelled) == before + 1
            ),
            "the queued request counted as cancelled",
            # under the neuron's own 30 s fallback: the engine dropped it and said so
            timeout_s=20,
        )
        assert node.model("single")["in_flight"] == 1
        seen = len(running)
        wait_for(lambda: len(running) > seen + 3, "the running request carries on")
    finally:
        httpx.post(node.url + "/models/unload", json={"id": "single"}, timeout=60)
        runner.join(120)
    assert "error" in running[-1] or running[-1] == "data: [DONE]"


def test_a_canary_crash_falls_back_to_safe_settings(tmp_path: Path) -> None:
    """The test hook makes the canary segfault while extra buffer types are on, as
    llama.cpp's AMX path did on a Xeon: the load retries without them and serves."""
    hook = {"CORTEX_TEST_CRASH_CANARY_WITH_EXTRA_BUFTS": "1"}
    neuron = Neuron(tmp_path, "canary", [f"{MODEL}={BUNDLED}"], env=hook)
    try:
        entry = neuron.model(MODEL)
        assert entry["fallback"] == "no extra buffer types after SIGSEGV in canary"
        assert answer(neuron.url, MODEL)
        assert "load retried with safe settings" in neuron.log_path.read_text()
        # forced on, the same crash is a failed load with the reason, not a retry
        spec = {"id": "forced", "source": BUNDLED, "extra_buffer_types": True}
        refused = httpx.post(neuron.url + "/models/load", json=spec, timeout=120)
        assert refused.status_code >= 500, refused.text
        assert "SIGSEGV" in refused.json()["error"]["message"]
        assert neuron.model("forced") is None
    finally:
        neuron.stop()
