"""The neuron's greedy output against transformers running the same GGUF (dequantised, fp32).

llama.cpp multiplies Q4_1 weights with activations rounded to 8 bits, so its logits
differ from the fp32 reference by up to ~1. Where the reference's top two tokens are
far apart the outputs are identical token for token; where they nearly tie, llama.cpp
may take the other one (the France prompt: "The" and "L" are 0.08 apart in the
reference; the haiku flips only with flash attention on, llama.cpp's default and
ours). So: exact equality on prompts without such a tie, and on every prompt each
token the neuron picks is a near-argmax of the reference.
"""

from __future__ import annotations

import openai
import pytest

import reference as ref
from procs import MODEL, Neuron

pytestmark = pytest.mark.slow

TOKENS = 16
# Prompts whose reference greedy path has no near-tie in its first 16 tokens.
EXACT = [
    "Name the largest planet in the solar system.",
    "What is 2+2?",
]
# Near ties flip with the CPU's kernels too: Romeo and Juliet matches on some x86 hosts
# and takes the other branch after 47 characters on an AMD EPYC (family 25).
NEAR_TIE = [
    "Who wrote Romeo and Juliet?",
    "What is the capital of France?",
    "List three primary colors.",
    "Write a haiku about the sea.",
]


@pytest.fixture(scope="module")
def client(neuron: Neuron) -> openai.OpenAI:
    return openai.OpenAI(base_url=neuron.url + "/v1", api_key="unused", max_retries=0)


def neuron_answer(client: openai.OpenAI, messages: list[dict]) -> tuple[str, int]:
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=TOKENS
    )
    return reply.choices[0].message.content or "", reply.usage.completion_tokens


@pytest.mark.parametrize("prompt", EXACT)
def test_greedy_tokens_equal_the_reference(client: openai.OpenAI, neuron: Neuron, prompt) -> None:
    messages = [{"role": "user", "content": prompt}]
    expected_ids = ref.greedy_ids(messages, TOKENS)
    assert len(expected_ids) >= 8
    text, count = neuron_answer(client, messages)
    assert count == len(expected_ids)
    assert text == ref.decode(expected_ids)


@pytest.mark.parametrize("prompt", EXACT + NEAR_TIE)
def test_every_greedy_token_is_a_reference_near_argmax(client: openai.OpenAI, prompt) -> None:
    messages = [{"role": "user", "content": prompt}]
    text, _ = neuron_answer(client, messages)
    ids = ref.reference().tokenizer.encode(text, add_special_tokens=False)
    gaps = ref.logit_gaps(messages, ids)
    assert gaps and max(gaps) < 0.5, gaps


def test_prompt_tokens_match_the_reference(neuron: Neuron) -> None:
    import httpx

    for prompt in EXACT + NEAR_TIE:
        messages = [{"role": "user", "content": prompt}]
        count = httpx.post(
            neuron.url + "/tokenize", json={"model": MODEL, "messages": messages}
        ).json()["count"]
        assert count == len(ref.prompt_ids(messages))
