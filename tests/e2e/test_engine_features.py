"""Prefix cache and the bounded wait queue, on a neuron of their own."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from procs import BUNDLED, UNENDING, Neuron

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    process = Neuron(tmp_path_factory.mktemp("features"), "features", [])
    for spec in (
        {"id": "cached", "context_length": 2048, "max_batch": 2},
        {"id": "uncached", "context_length": 2048, "max_batch": 2, "prefix_cache": False},
        {"id": "tiny-queue", "context_length": 512, "max_batch": 1, "max_queue": 1},
    ):
        answer = httpx.post(
            process.url + "/models/load", json={"source": BUNDLED, **spec}, timeout=60
        )
        assert answer.status_code == 200, answer.text
    yield process
    process.stop()


def test_second_turn_reuses_the_prefix_and_answers_the_same(node: Neuron) -> None:
    """Same answer with and without the cache, as far as batched floating point allows.

    KV reused from the cache was computed in other batches (decode steps of one token,
    prefill chunks of other sizes) than a fresh prefill, so its last bits differ; on
    this model and prompt the greedy answers agree for ~20 tokens, then may part at a
    near tie. The first 12 tokens are compared.
    """
    client = openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)
    history = [{"role": "user", "content": "Tell me about the history of Rome."}]

    def turn(model: str, messages: list[dict], tokens: int = 40):
        return client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=tokens
        )

    first = turn("cached", history)
    history += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And what about its emperors?"},
    ]
    cached = turn("cached", history, 12)
    uncached = turn("uncached", history, 12)
    hits = cached.usage.prompt_tokens_details.cached_tokens
    assert hits > first.usage.prompt_tokens  # the whole first turn, answer included
    assert uncached.usage.prompt_tokens_details.cached_tokens == 0
    assert cached.choices[0].message.content == uncached.choices[0].message.content
    streamed = client.chat.completions.create(
        model="cached", messages=history, temperature=0, max_tokens=40, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    *_, last = list(streamed)
    assert last.usage.prompt_tokens_details.cached_tokens > 0


def test_full_queue_answers_429_with_retry_after(node: Neuron) -> None:
    body = {
        "model": "tiny-queue",
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 450,
        "stream": True,
        **UNENDING,  # a grammar that forbids stopping early keeps both held requests busy
    }
    started = threading.Barrier(3)
    release = threading.Event()

    def hold() -> None:
        with httpx.stream("POST", node.url + "/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept: dropping the iterator would close the stream
            next(lines)  # the role chunk: admitted (running or waiting)
            started.wait()
            release.wait(30)

    holders = [threading.Thread(target=hold) for _ in range(2)]  # one running, one waiting
    for thread in holders:
        thread.start()
    try:
        started.wait(30)
        model = node.model("tiny-queue")
        assert (model["in_flight"], model["queued"]) == (1, 1)
        refused = httpx.post(node.url + "/v1/chat/completions", json=body)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"
    finally:
        release.set()
        for thread in holders:
            thread.join()
