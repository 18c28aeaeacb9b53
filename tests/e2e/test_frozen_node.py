"""A frozen neuron (SIGSTOP) does not freeze its clients: once the poller marks it down,
its answers in flight end with an error in the client's dialect, and a stream that
hears nothing for ``upstream_idle_timeout_s`` ends too."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import httpx
import pytest

from procs import BUNDLED, MODEL, UNENDING, Gateway, Neuron, gateway_config, wait_for

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Tell me a long story."}]


def _stream(url: str, lines: list[str]) -> None:
    body = {"model": MODEL, "messages": QUESTION, "stream": True, "max_tokens": 400, **UNENDING}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        lines.extend(line for line in r.iter_lines() if line)


def _plain(url: str, answers: list[httpx.Response]) -> None:
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 400, **UNENDING}
    answers.append(httpx.post(url + "/v1/chat/completions", json=body, timeout=300))


@pytest.mark.parametrize("idle_timeout", [300, 10])
def test_answers_from_a_frozen_node_end_with_an_error(tmp_path: Path, idle_timeout) -> None:
    neuron = Neuron(tmp_path, "frozen", [f"{MODEL}={BUNDLED}"])
    # polled every 0.5 s, down after 3 misses; a short idle timeout in the second case
    # with polls far apart, so that it is the idle timeout that ends the stream
    poll = 0.5 if idle_timeout == 300 else 60
    config = gateway_config(neuron, poll_interval_s=poll).replace(
        "[gateway]\n", f"[gateway]\nupstream_idle_timeout_s = {idle_timeout}\n"
    )
    gateway = Gateway(tmp_path, config, wait_for_models={MODEL})
    lines: list[str] = []
    answers: list[httpx.Response] = []
    clients = [threading.Thread(target=_stream, args=(gateway.url, lines))]
    if idle_timeout == 300:
        clients.append(threading.Thread(target=_plain, args=(gateway.url, answers)))
    try:
        ready = httpx.get(gateway.url + "/ready")
        assert ready.status_code == 200 and ready.json()["models"] == [MODEL]
        for client in clients:
            client.start()
        wait_for(lambda: sum(line.startswith("data: {") for line in lines) > 3, "streaming")
        wait_for(lambda: neuron.model(MODEL)["in_flight"] == len(clients), "all generating")
        neuron.signal(signal.SIGSTOP)
        clients[0].join(120)
        assert not clients[0].is_alive(), "the stream still hangs on the frozen node"
        last = json.loads(lines[-1].removeprefix("data: "))
        assert "error" in last, lines[-2:]
        if idle_timeout == 300:  # the poller's down mark ends the plain answer too
            clients[1].join(120)
            assert not clients[1].is_alive(), "the plain request still hangs"
            assert answers[0].status_code >= 500
            assert "error" in answers[0].json()
            # readiness follows: no node up with a model, while liveness stays 200
            assert httpx.get(gateway.url + "/ready").status_code == 503
            assert httpx.get(gateway.url + "/health").status_code == 200
    finally:
        neuron.signal(signal.SIGCONT)
        for client in clients:
            client.join(300)
        gateway.stop()
        neuron.stop()
