"""No cross-talk: concurrent requests each get exactly the answer they get alone.

On a neuron of its own: the prefix cache reuses the KV of earlier requests, and
llama.cpp's CPU kernels are not batch-invariant (a prefix whose KV was computed
inside a long prefill can differ in its last bits from the same prefix computed in
a short one), so on a neuron that served other traffic first a greedy near-tie can
flip between two runs of one prompt. Cross-talk does not depend on history; this
test controls it so that only cross-talk can fail it.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from procs import (
    BATCH_STABLE,
    BUNDLED,
    MODEL,
    UNENDING,
    Gateway,
    Neuron,
    first_token,
    gateway_config,
    wait_for,
)

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "Explain photosynthesis in one sentence.",
    "What is 12 times 12?",
    "Name a famous painter.",
    "Give me a synonym for happy.",
    "Why is the sky blue?",
]
TOKENS = 32


def ask(client: openai.OpenAI, prompt: str, stream: bool = False) -> str:
    messages = [{"role": "user", "content": prompt}]
    if stream:
        chunks = client.chat.completions.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=TOKENS, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=TOKENS
    )
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    # answers alone and beside others are compared token for token: batch-stable
    process = Neuron(
        tmp_path_factory.mktemp("concurrency"),
        "c1",
        [f"{MODEL}={BUNDLED}"],
        spec_fields=BATCH_STABLE,
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def fresh(node: Neuron, tmp_path_factory: pytest.TempPathFactory):
    gateway = Gateway(
        tmp_path_factory.mktemp("concurrency-gw"), gateway_config(node), None, {MODEL}
    )
    yield gateway
    gateway.stop()


def test_concurrent_requests_equal_their_solo_answers(fresh: Gateway) -> None:
    client = openai.OpenAI(base_url=fresh.url + "/v1", api_key="unused", max_retries=0)
    solo = [ask(client, prompt) for prompt in PROMPTS]
    assert len(set(solo)) == len(PROMPTS)  # distinct answers, so a mix-up would show
    # Twice the neuron's max_batch (4): half batched together, half queued behind them,
    # streaming and not mixed.
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(
            pool.map(lambda ip: ask(client, ip[1], stream=ip[0] % 2 == 0), enumerate(PROMPTS))
        )
    for prompt, alone, batched in zip(PROMPTS, solo, together, strict=True):
        assert batched == alone, prompt


def steps_of_two_or_more(node: Neuron) -> float:
    """Decode steps of the model that carried two sequences or more, from the neuron's
    ``neuron_batch_size`` histogram: all steps less those in the ``le="1.0"`` bucket."""
    text = httpx.get(node.url + "/metrics", timeout=10).text
    buckets = {
        sample.labels["le"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "neuron_batch_size_bucket" and sample.labels.get("model") == MODEL
    }
    assert {"1.0", "+Inf"} <= buckets.keys(), buckets
    return buckets["+Inf"] - buckets["1.0"]


# After the answers are compared: the long generations here leave KV in the prefix
# cache that the comparison above should not see.
def test_concurrent_streams_are_decoded_together(node: Neuron, fresh: Gateway) -> None:
    """Continuous batching, shown without a clock: four streams each hold a generated
    token while all four are still running. An engine serving one request at a time
    could not get there: the first stream's 2000 tokens (its grammar forbids an earlier
    end) would have to finish before the second stream's first token."""
    max_batch = node.model(MODEL)["spec"]["max_batch"]
    assert max_batch >= 4
    before = steps_of_two_or_more(node)
    body = {
        "model": MODEL,
        "max_tokens": 2000,
        "stream": True,
        "temperature": 0,
        **UNENDING,
    }
    readers = []  # kept: a dropped line iterator would close its stream
    with contextlib.ExitStack() as held:
        for prompt in PROMPTS[:4]:
            stream = held.enter_context(
                httpx.stream(
                    "POST",
                    fresh.url + "/v1/chat/completions",
                    json={**body, "messages": [{"role": "user", "content": prompt}]},
                    timeout=120,
                )
            )
            assert stream.status_code == 200
            # read up to its first token, then leave it unread (and open): it runs on
            readers.append(stream.iter_lines())
            first_token(readers[-1])
        model = node.model(MODEL)
        assert (model["in_flight"], model["queued"]) == (4, 0)
    # the clients left: their sequences are freed at the next step
    wait_for(lambda: node.model(MODEL)["in_flight"] == 0, "the held streams to end")
    assert steps_of_two_or_more(node) > before
