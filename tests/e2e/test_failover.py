"""A node that dies: requests go elsewhere before the first byte, streams end with an error."""

from __future__ import annotations

import httpx
import openai
import pytest

from procs import BUNDLED, MODEL, Gateway, Neuron

pytestmark = pytest.mark.slow

ESSAY = [{"role": "user", "content": "Write a very long essay about rivers."}]


@pytest.fixture
def pair(tmp_path):
    spec = f"{MODEL}={BUNDLED}"
    a = Neuron(tmp_path, "a", [spec])
    b = Neuron(tmp_path, "b", [spec])
    config = f"""
[gateway]
poll_interval_s = 30   # slow on purpose: failures must be noticed by requests, not polls

[[neurons]]
name = "a"
endpoint = "{a.url}"

[[neurons]]
name = "b"
endpoint = "{b.url}"
"""
    gateway = Gateway(tmp_path, config, "", {MODEL})
    yield gateway, a, b
    gateway.stop()
    a.stop()
    b.stop()


def test_dead_node_before_first_byte_fails_over(pair) -> None:
    gateway, a, _ = pair
    a.kill()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    for _ in range(3):
        reply = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=ESSAY, max_tokens=4
        )
        assert reply.headers["x-cortex-node"] == "b"
        assert reply.parse().choices[0].message.content
    fleet = httpx.get(gateway.url + "/fleet").json()
    assert {n["name"]: n["up"] for n in fleet["nodes"]} == {"a": False, "b": True}


def test_node_dying_mid_stream_ends_the_stream_with_an_error(pair) -> None:
    gateway, a, b = pair
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=ESSAY, max_tokens=3000, stream=True
    )
    victim = a if stream.headers["x-cortex-node"] == "a" else b
    chunks = stream.parse()
    received = 0
    with pytest.raises(openai.APIError, match="mid-stream"):
        for _ in chunks:
            received += 1
            if received == 5:
                victim.kill()
    assert received >= 5


def test_a_dead_nodes_model_is_loaded_elsewhere_on_the_next_request(tmp_path) -> None:
    a = Neuron(tmp_path, "a", [f"{MODEL}={BUNDLED}"])
    b = Neuron(tmp_path, "b")
    config = f"""
[gateway]
poll_interval_s = 30

[[neurons]]
name = "a"
endpoint = "{a.url}"

[[neurons]]
name = "b"
endpoint = "{b.url}"
"""
    models = f'[[models]]\nid = "{MODEL}"\nsource = "{BUNDLED}"\ncontext_length = 1024\n'
    gateway = Gateway(tmp_path, config, models, {MODEL})
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        first = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=ESSAY, max_tokens=4
        )
        assert first.headers["x-cortex-node"] == "a"
        a.kill()
        again = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=ESSAY, max_tokens=4
        )
        assert again.headers["x-cortex-node"] == "b"
        assert again.parse().choices[0].message.content
        assert b.model(MODEL)["state"] == "ready"
    finally:
        gateway.stop()
        b.stop()
        a.stop()


def test_a_node_dying_mid_stream_ends_an_anthropic_stream_with_an_error_event(pair) -> None:
    gateway, a, b = pair
    body = {"model": MODEL, "max_tokens": 3000, "messages": ESSAY, "stream": True}
    frames: list[str] = []
    with httpx.stream("POST", gateway.url + "/v1/messages", json=body, timeout=60) as response:
        victim = a if response.headers["x-cortex-node"] == "a" else b
        buffer = ""
        for text in response.iter_text():
            buffer += text
            *complete, buffer = buffer.split("\n\n")
            frames += complete
            if len(frames) == 6:
                victim.kill()
    assert frames[0].startswith("event: message_start")
    assert frames[-1].startswith("event: error")
    assert '"type":"error"' in frames[-1].replace(" ", "")
    assert not any(frame.startswith("event: message_stop") for frame in frames)
