"""The gateway in front of a real neuron, driven by the official openai SDK."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import httpx
import openai
import pytest

from procs import MODEL, UNENDING, Gateway, Neuron, first_token, metric, wait_for

pytestmark = pytest.mark.slow

COLORS = [{"role": "user", "content": "List three primary colors."}]


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def direct(neuron: Neuron) -> openai.OpenAI:
    return openai.OpenAI(base_url=neuron.url + "/v1", api_key="unused", max_retries=0)


def test_models_are_merged_with_placement(client: openai.OpenAI) -> None:
    (card,) = client.models.list().data
    assert card.id == MODEL and card.object == "model"
    assert card.model_extra["loaded_on"] == ["n1"]
    assert card.model_extra["aliases"] == [
        "claude-haiku-*",
        "claude-sonnet-*",
        "claude-opus-*",
        "small",
    ]


def test_answers_equal_the_neurons(client: openai.OpenAI, direct: openai.OpenAI) -> None:
    through = client.chat.completions.create(
        model=MODEL, messages=COLORS, temperature=0, max_tokens=20
    )
    straight = direct.chat.completions.create(
        model=MODEL, messages=COLORS, temperature=0, max_tokens=20
    )
    assert through.choices[0].message.content == straight.choices[0].message.content
    assert through.usage.prompt_tokens == straight.usage.prompt_tokens


def test_alias_reaches_the_model(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="claude-haiku-4-5", messages=COLORS, max_tokens=3)
    assert reply.model == MODEL


def test_stream_passes_through_chunk_by_chunk(
    gateway: Gateway, neuron: Neuron, client: openai.OpenAI
) -> None:
    pieces: list[str] = []
    stream = client.chat.completions.create(
        model=MODEL,
        messages=COLORS,
        temperature=0,
        max_tokens=60,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
    assert chunk.usage is not None and chunk.usage.completion_tokens > 10
    assert len(pieces) > 10
    solo = client.chat.completions.create(
        model=MODEL, messages=COLORS, temperature=0, max_tokens=60
    )
    assert "".join(pieces) == solo.choices[0].message.content
    # Chunks reach the client as they are generated, not all at once at the end: the
    # first one is here while the neuron is still generating the rest of the answer.
    long = {"model": MODEL, "messages": COLORS, "max_tokens": 2000, "stream": True, **UNENDING}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=long, timeout=60) as raw:
        assert raw.status_code == 200, raw.read().decode()
        assert raw.headers["x-cortex-node"] == "n1"
        lines = raw.iter_lines()  # kept: a dropped iterator closes the stream
        first_token(lines)
        assert neuron.model(MODEL)["in_flight"] == 1
    wait_for(lambda: neuron.model(MODEL)["in_flight"] == 0, "the abandoned stream to stop")
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": COLORS, "max_tokens": 3, "stream": True},
    ) as raw:
        assert raw.headers["x-cortex-node"] == "n1"
        assert raw.read().decode().rstrip().endswith("data: [DONE]")


def test_unknown_model_is_a_404_in_openai_shape(gateway: Gateway, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=COLORS)
    assert "gpt-17" in caught.value.message
    raw = httpx.post(
        gateway.url + "/v1/chat/completions", json={"model": "gpt-17", "messages": COLORS}
    )
    assert raw.status_code == 404
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_bad_input_gets_a_400_that_says_what_is_wrong(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    url = gateway.url + "/v1/chat/completions"
    cases = {
        b"{oops": "not valid JSON",
        b"[1, 2]": "JSON object",
        b'{"messages": []}': "'model'",
        b'{"model": "smollm2-135m-instruct"}': "'messages'",
        b'{"model": "smollm2-135m-instruct", "messages": [{"role": "robot"}]}': "role",
        b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x"}],'
        b' "temperature": "hot"}': "temperature",
    }
    for body, expected in cases.items():
        answer = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 400, body
        assert expected in answer.json()["error"]["message"], (body, answer.json())
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello " * 5000}]
        )
    assert "4096" in caught.value.message


ESSAY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Write a very long essay about rivers."}],
    "max_tokens": 3000,
    "temperature": 0,
}


def cancelled(neuron: Neuron) -> float:
    """Generations the neuron ended because their client left."""
    return metric(neuron.url + "/metrics", "neuron_requests_total", model=MODEL, finish="cancelled")


def generated(neuron: Neuron) -> float:
    return metric(neuron.url + "/metrics", "neuron_generated_tokens_total", model=MODEL)


def test_client_disconnect_stops_generation(gateway: Gateway, neuron: Neuron) -> None:
    before, tokens_before = cancelled(neuron), generated(neuron)
    body = {**ESSAY, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as s:
        lines = s.iter_lines()  # kept: a dropped iterator closes the stream
        seen = [first_token(lines) for _ in range(5)]
        assert neuron.model(MODEL)["in_flight"] == 1
    # Freed at the next decode step. The wait's bound is generous; what proves the stop
    # is how the neuron counts the generation's end: cancelled, not stop or length.
    wait_for(lambda: neuron.model(MODEL)["in_flight"] == 0, "the generation to stop")
    wait_for(lambda: cancelled(neuron) == before + 1, "the generation counted as cancelled")
    # What a cancelled generation produced is counted: at least the tokens the client saw.
    assert generated(neuron) >= tokens_before + len(seen)


def post_and_leave(url: str, body: dict, started: Callable[[], bool]) -> None:
    """POSTs ``body`` to ``url`` over a bare socket, waits until ``started()``, then closes
    the connection without reading the answer, as a client that gives up does."""
    address = httpx.URL(url)
    payload = json.dumps(body).encode()
    head = (
        f"POST {address.raw_path.decode()} HTTP/1.1\r\nHost: {address.host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    with socket.create_connection((address.host, address.port), timeout=30) as sock:
        sock.sendall(head.encode() + payload)
        wait_for(started, "the request to start generating")


@pytest.mark.parametrize("via", ["gateway", "neuron"])
def test_a_client_leaving_a_non_streamed_request_stops_its_generation(
    gateway: Gateway, neuron: Neuron, via: str
) -> None:
    url = {"gateway": gateway.url, "neuron": neuron.url}[via]
    before = cancelled(neuron)
    # the answer would take a minute or more; the client leaves once it is generating
    post_and_leave(
        url + "/v1/chat/completions", ESSAY, lambda: neuron.model(MODEL)["in_flight"] == 1
    )
    wait_for(lambda: neuron.model(MODEL)["in_flight"] == 0, "the generation to stop")
    wait_for(lambda: cancelled(neuron) == before + 1, "the generation counted as cancelled")


def test_liveness_and_fleet(gateway: Gateway) -> None:
    assert httpx.head(gateway.url + "/").status_code == 200
    assert httpx.get(gateway.url + "/health").json()["status"] == "ok"
    fleet = httpx.get(gateway.url + "/fleet").json()
    (node,) = fleet["nodes"]
    assert node["name"] == "n1" and node["up"] is True
    assert node["devices"][0]["id"] == "cpu"
    assert [m["id"] for m in node["models"]] == [MODEL]
    assert fleet["models"][0]["loaded_on"] == ["n1"]


async def test_the_async_openai_client(gateway: Gateway) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    reply = await client.chat.completions.create(model=MODEL, messages=COLORS, max_tokens=4)
    assert reply.choices[0].message.content
    stream = await client.chat.completions.create(
        model=MODEL, messages=COLORS, max_tokens=4, stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
