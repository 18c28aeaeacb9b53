"""No cross-talk: concurrent requests each get exactly the answer they get alone.

On a neuron of its own: the prefix cache reuses the KV of earlier requests, and
llama.cpp's CPU kernels are not batch-invariant (a prefix whose KV was computed
inside a long prefill can differ in its last bits from the same prefix computed in
a short one), so on a neuron that served other traffic first a greedy near-tie can
flip between two runs of one prompt. Cross-talk does not depend on history; this
test controls it so that only cross-talk can fail it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from procs import BUNDLED, MODEL, Gateway, Neuron, gateway_config

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
def fresh(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("concurrency")
    node = Neuron(tmp, "c1", [f"{MODEL}={BUNDLED}"])
    gateway = Gateway(tmp, gateway_config(node), None, {MODEL})
    yield gateway
    gateway.stop()
    node.stop()


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
