"""A request that crashes an engine is not passed on to crash the next node: the client
gets one clear error, the other node never sees it, and the same request sent again is
refused at once, fleet-wide."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from procs import BUNDLED, MODEL, Gateway, Neuron, gateway_config, metric, wait_for

pytestmark = pytest.mark.slow

FAULTS = ["--enable-fault-injection"]


def _chat(url: str, text: str, session: str) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": 8,
    }
    return httpx.post(
        url + "/v1/chat/completions", json=body, headers={"x-session-id": session}, timeout=120
    )


def test_a_request_that_crashes_an_engine_is_answered_once_and_refused_after(
    tmp_path: Path,
) -> None:
    spec = [f"{MODEL}={BUNDLED}"]
    a, b = Neuron(tmp_path, "a", spec, FAULTS), Neuron(tmp_path, "b", spec, FAULTS)
    gateway = Gateway(tmp_path, gateway_config(a, b), "", {MODEL})
    try:
        first = _chat(gateway.url, "Hello there.", "pinned")
        assert first.status_code == 200, first.text
        victim = {"a": a, "b": b}[first.headers["x-cortex-node"]]
        other = b if victim is a else a
        seen_by_other = metric(other.url + "/metrics", "neuron_requests_total", model=MODEL)
        # The victim's engine segfaults on its next step: the next request "crashes" it.
        armed = httpx.post(victim.url + "/debug/fault", json={"model": MODEL, "kind": "segfault"})
        assert armed.status_code == 200
        crashed = _chat(gateway.url, "What is 2+2?", "pinned")
        assert crashed.status_code == 503, crashed.text
        assert crashed.json()["error"]["code"] == "engine_crashed"
        assert metric(other.url + "/metrics", "neuron_requests_total", model=MODEL) == (
            seen_by_other
        ), "the crashing request must not be sent on to the other node"
        # Sent again (even to whichever node): refused at once, no node reached.
        again = _chat(gateway.url, "What is 2+2?", "elsewhere")
        assert again.status_code == 400, again.text
        assert again.json()["error"]["code"] == "poison_request"
        assert "refused" in gateway.log_path.read_text()
        # Both neurons stay up; the victim's model heals; other requests are served.
        wait_for(lambda: victim.model(MODEL)["state"] == "ready", "the victim heals", 120)
        assert victim.model(MODEL)["restarts"] == 1
        assert httpx.get(other.url + "/health").status_code == 200
        assert _chat(gateway.url, "Hello again.", "elsewhere").status_code == 200
    finally:
        gateway.stop()
        a.stop()
        b.stop()
