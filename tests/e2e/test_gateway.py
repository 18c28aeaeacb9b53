"""The gateway in front of a real neuron, driven by the official openai SDK."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest

from procs import MODEL, Gateway, Neuron

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


def test_stream_passes_through_chunk_by_chunk(gateway: Gateway, client: openai.OpenAI) -> None:
    arrivals: list[float] = []
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
        arrivals.append(time.monotonic())
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
    assert chunk.usage is not None and chunk.usage.completion_tokens > 10
    # Chunks reach the client as they are generated, not all at once at the end.
    assert arrivals[-1] - arrivals[1] > 0.05
    assert len(pieces) > 10
    solo = client.chat.completions.create(
        model=MODEL, messages=COLORS, temperature=0, max_tokens=60
    )
    assert "".join(pieces) == solo.choices[0].message.content
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


def test_client_disconnect_stops_generation(gateway: Gateway, neuron: Neuron) -> None:
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a very long essay about rivers."}],
            "max_tokens": 3000,
            "stream": True,
        },
        timeout=30,
    ) as stream:
        lines = stream.iter_lines()
        for _ in range(6):
            next(lines)
        assert neuron.model(MODEL)["in_flight"] == 1
    # freed within a decode step or two, well inside a second
    deadline = time.monotonic() + 1
    while neuron.model(MODEL)["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert neuron.model(MODEL)["in_flight"] == 0


@pytest.mark.parametrize("via", ["gateway", "neuron"])
def test_a_client_leaving_a_non_streamed_request_stops_its_generation(
    gateway: Gateway, neuron: Neuron, via: str
) -> None:
    url = {"gateway": gateway.url, "neuron": neuron.url}[via]
    essay = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long essay about rivers."}],
        "max_tokens": 3000,
        "temperature": 0,
    }
    # The client gives up after 1.5 s; the answer would take a minute or more.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json=essay, timeout=1.5)
    deadline = time.monotonic() + 2
    while neuron.model(MODEL)["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert neuron.model(MODEL)["in_flight"] == 0


def test_liveness_and_fleet(gateway: Gateway) -> None:
    assert httpx.head(gateway.url + "/").status_code == 200
    assert httpx.get(gateway.url + "/health").json()["status"] == "ok"
    fleet = httpx.get(gateway.url + "/fleet").json()
    (node,) = fleet["nodes"]
    assert node["name"] == "n1" and node["up"] is True
    assert node["devices"][0]["id"] == "cpu"
    assert [m["id"] for m in node["models"]] == [MODEL]
    assert fleet["models"][0]["loaded_on"] == ["n1"]


def test_api_keys_guard_every_api_route(neuron: Neuron, tmp_path) -> None:
    config = f"""
[gateway]
api_keys = ["sk-one", "sk-two"]

[[neurons]]
name = "{neuron.name}"
endpoint = "{neuron.url}"
"""
    process = Gateway(tmp_path, config, "", api_key="sk-two")
    try:
        keyless = openai.OpenAI(base_url=process.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            keyless.models.list()
        with pytest.raises(openai.AuthenticationError):
            keyless.chat.completions.create(model=MODEL, messages=COLORS, max_tokens=1)
        assert httpx.get(process.url + "/fleet").status_code == 401
        assert httpx.head(process.url + "/").status_code == 200  # liveness stays open
        keyed = openai.OpenAI(base_url=process.url + "/v1", api_key="sk-one", max_retries=0)
        assert keyed.chat.completions.create(model=MODEL, messages=COLORS, max_tokens=1)
        by_header = httpx.get(process.url + "/v1/models", headers={"x-api-key": "sk-two"})
        assert by_header.status_code == 200
        # the Anthropic SDK sends x-api-key, and gets a 401 in its own envelope
        wrong = anthropic.Anthropic(base_url=process.url, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as caught:
            wrong.messages.create(model=MODEL, max_tokens=1, messages=COLORS)
        assert caught.value.body["type"] == "error"
        right = anthropic.Anthropic(base_url=process.url, api_key="sk-one", max_retries=0)
        assert right.messages.create(model=MODEL, max_tokens=1, messages=COLORS).content
    finally:
        process.stop()


async def test_the_async_openai_client(gateway: Gateway) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    reply = await client.chat.completions.create(model=MODEL, messages=COLORS, max_tokens=4)
    assert reply.choices[0].message.content
    stream = await client.chat.completions.create(
        model=MODEL, messages=COLORS, max_tokens=4, stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
