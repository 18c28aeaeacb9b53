"""`cortex serve` with no configuration: gateway + local neuron + bundled model."""

from __future__ import annotations

import signal

import httpx
import openai
import pytest

from procs import MODEL, Gateway, alive, children_of, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_embedded_default_answers_and_stops_cleanly(tmp_path, stop_signal) -> None:
    gateway = Gateway(tmp_path, config=None, wait_for_models={MODEL})
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == [MODEL]
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
        )
        assert reply.choices[0].message.content
        # Claude Code's model names reach the bundled model out of the box.
        aliased = client.chat.completions.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert aliased.model == MODEL
        fleet = httpx.get(gateway.url + "/fleet").json()
        assert fleet["models"][0]["pinned"] is True
        children = children_of(gateway.pid)
        assert children, "the local neuron runs as a child of the gateway"
    finally:
        gateway.signal(stop_signal)
        code = gateway.proc.wait(60)
    assert code == 0, gateway.log_tail()
    # the neuron may outlive the gateway's exit by a moment: wait for it (a bound, not a
    # timing check), and then none is left behind
    wait_for(lambda: not any(alive(pid) for pid in children), "the local neuron to exit")


def test_killed_gateway_takes_its_neuron_along(tmp_path) -> None:
    gateway = Gateway(tmp_path, config=None)
    children = children_of(gateway.pid)
    assert children
    gateway.kill()
    wait_for(lambda: not any(alive(pid) for pid in children), "the orphaned neuron to exit")
