"""Routing by where a prefix lives, over two real neurons behind a real gateway:
conversations start on both nodes, every follow-up lands on the node that served the
turns before it, and still does after the gateway restarts (a new process with no
memory of its own: the neurons' reported prefix digests are what it routes by).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from procs import BUNDLED, MODEL, Gateway, Neuron, gateway_config

pytestmark = pytest.mark.slow

TOPICS = ("rivers", "mountains", "deserts", "forests")


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Neuron, Neuron]]:
    spec = [f"{MODEL}={BUNDLED}"]
    a = Neuron(tmp_path, "a", spec)
    try:
        b = Neuron(tmp_path, "b", spec)
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def gateway(tmp: Path, nodes: tuple[Neuron, Neuron]) -> Gateway:
    tmp.mkdir()
    started = Gateway(tmp, gateway_config(*nodes, poll_interval_s=0.5), "", {MODEL})
    started.wait_until(lambda: holders(started) == 2, "both nodes ready on the gateway")
    return started


def holders(gateway: Gateway) -> int:
    fleet = httpx.get(gateway.url + "/fleet", timeout=5).json()
    return sum(
        any(m["id"] == MODEL and m["state"] == "ready" for m in node["models"])
        for node in fleet["nodes"]
    )


def turn(gateway: Gateway, messages: list[dict[str, str]]) -> str:
    """One turn: the answer is appended to ``messages``; returns the node that served."""
    body = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 4}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    messages.append(response.json()["choices"][0]["message"])
    return response.headers["x-cortex-node"]


def ask(messages: list[dict[str, str]], question: str) -> list[dict[str, str]]:
    messages.append({"role": "user", "content": question})
    return messages


def test_follow_ups_land_where_their_prefix_lives_across_a_gateway_restart(
    tmp_path: Path, nodes: tuple[Neuron, Neuron]
) -> None:
    conversations = {t: [{"role": "system", "content": "Answer in one word."}] for t in TOPICS}
    first = gateway(tmp_path / "first", nodes)
    try:
        served = {t: turn(first, ask(m, f"Name one of the {t}.")) for t, m in conversations.items()}
        assert set(served.values()) == {"a", "b"}, served  # started on both nodes
        for topic, messages in conversations.items():
            assert turn(first, ask(messages, "And another?")) == served[topic], topic
    finally:
        first.stop()
    for node in nodes:  # what the neurons report: one hash per prompt part, at least
        digest = next(m for m in node.status()["models"] if m["id"] == MODEL)["prefix_digest"]
        assert len(digest) >= 2 * list(served.values()).count(node.name), node.name

    second = gateway(tmp_path / "second", nodes)
    try:
        time.sleep(1.0)  # a poll or two: the digests, not this gateway's memory, decide
        for topic, messages in conversations.items():
            assert turn(second, ask(messages, "One more?")) == served[topic], topic
    finally:
        second.stop()
