"""The dense engine's sampler: the GGUF engine's parameters, the same meaning."""

from __future__ import annotations

import pytest

import required
from cortex.neuron.engines.base import SamplingParams

torch = required.module("torch")

from cortex.neuron.engines.dense.sampling import Sampler, apply_penalties  # noqa: E402

LOGITS = torch.tensor([1.0, 3.0, 2.0, -1.0, 0.5])


def test_temperature_zero_is_argmax() -> None:
    assert Sampler(SamplingParams(temperature=0)).sample(LOGITS) == 1


def test_top_k_one_and_tiny_top_p_are_greedy_whatever_the_temperature() -> None:
    for params in (
        SamplingParams(temperature=5.0, top_k=1),
        SamplingParams(temperature=5.0, top_p=0.01),
        SamplingParams(temperature=5.0, min_p=0.99),
    ):
        sampler = Sampler(params)
        assert {sampler.sample(LOGITS) for _ in range(20)} == {1}


def test_a_seed_repeats_the_draws() -> None:
    def draws() -> list[int]:
        sampler = Sampler(SamplingParams(temperature=1.5, seed=42))
        return [sampler.sample(LOGITS) for _ in range(30)]

    first = draws()
    assert first == draws()
    assert len(set(first)) > 1  # it did sample


def test_penalties_as_llama_cpp_defines_them() -> None:
    params = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    out = apply_penalties(LOGITS, [1, 1, 3], params)
    assert out[1] == pytest.approx(3.0 / 2 - 2 * 0.5 - 0.25)  # positive: divided
    assert out[3] == pytest.approx(-1.0 * 2 - 0.5 - 0.25)  # negative: multiplied
    assert out[0] == LOGITS[0]  # unseen: untouched


def test_repetition_penalty_steers_greedy_away_from_the_last_tokens() -> None:
    sampler = Sampler(SamplingParams(temperature=0, repetition_penalty=10.0))
    assert sampler.sample(LOGITS) == 1
    assert sampler.sample(LOGITS) == 2  # 1 was just generated: 3.0 / 10 < 2.0
