"""The embedded default supervises its neuron: killed or frozen, it comes back by itself."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from procs import MODEL, Gateway, alive, children_of, wait_for

pytestmark = pytest.mark.slow

BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "What is 2+2?"}],
    "temperature": 0,
    "max_tokens": 32,
}


def _neuron_of(gateway: Gateway) -> int:
    (pid,) = [pid for pid in children_of(gateway.pid) if alive(pid)]
    return pid


def _answers(gateway: Gateway, refusals: list[httpx.Response]) -> bool:
    response = httpx.post(gateway.url + "/v1/chat/completions", json=BODY, timeout=120)
    if response.status_code == 200:
        return True
    refusals.append(response)
    return False


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP])
def test_a_lost_local_neuron_is_restarted_and_serves_again(tmp_path, how) -> None:
    gateway = Gateway(tmp_path, config=None, wait_for_models={MODEL})
    try:
        before = httpx.post(gateway.url + "/v1/chat/completions", json=BODY, timeout=120)
        assert before.status_code == 200, before.text
        first = _neuron_of(gateway)
        os.kill(first, how)
        refusals: list[httpx.Response] = []
        wait_for(lambda: _answers(gateway, refusals), "the gateway answers again", 180)
        after = httpx.post(gateway.url + "/v1/chat/completions", json=BODY, timeout=120)
        # The embedded default runs the plain attention path on a CPU, whose answers
        # from a cached prefix may part from cold ones at a near tie: the sum, not the text.
        for reply in (before, after):
            assert "4" in reply.json()["choices"][0]["message"]["content"]
        # Meanwhile: 503 with Retry-After in the client's dialect, never a 502.
        for refused in refusals:
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
        second = _neuron_of(gateway)
        assert second != first
        assert "local neuron restarted" in gateway.log_path.read_text()
        fleet = httpx.get(gateway.url + "/fleet").json()
        assert fleet["nodes"][0]["restarts"] >= 1
    finally:
        gateway.stop()
    wait_for(lambda: not alive(first), "the frozen neuron was killed, not left behind", 30)
