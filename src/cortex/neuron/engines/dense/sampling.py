"""Picking the next token from a row of logits, as the GGUF engine's sampler chain does.

Order as in llama.cpp's chain: penalties (over the last ``PENALTY_WINDOW`` generated
tokens), then greedy when ``temperature <= 0``, else top-k, top-p, min-p, temperature
and a seeded draw. Grammars are not applied here: the dense engine refuses them.
"""

from __future__ import annotations

import random

import torch

from cortex.neuron.engines.base import SamplingParams

PENALTY_WINDOW = 64


class Sampler:
    """One sequence's sampler: its parameters, its random stream, its recent tokens."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        self._generator = torch.Generator().manual_seed(seed & 0xFFFFFFFF)
        self._recent: list[int] = []

    def sample(self, logits: torch.Tensor) -> int:
        p = self.params
        logits = logits.float().cpu()
        if self._recent and (
            p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0
        ):
            logits = apply_penalties(logits, self._recent, p)
        token = int(torch.argmax(logits)) if p.temperature <= 0 else self._draw(logits)
        self._recent = [*self._recent[-(PENALTY_WINDOW - 1) :], token]
        return token

    def _draw(self, logits: torch.Tensor) -> int:
        p = self.params
        values, ids = torch.sort(logits, descending=True)
        if p.top_k > 0:
            values, ids = values[: p.top_k], ids[: p.top_k]
        if p.top_p < 1.0:
            probs = torch.softmax(values, dim=-1)
            # keep the smallest head whose mass reaches top_p (at least one token)
            keep = int(torch.searchsorted(torch.cumsum(probs, dim=-1), p.top_p)) + 1
            values, ids = values[:keep], ids[:keep]
        if p.min_p > 0:
            probs = torch.softmax(values, dim=-1)
            keep = max(1, int((probs >= p.min_p * probs[0]).sum()))
            values, ids = values[:keep], ids[:keep]
        probs = torch.softmax(values / p.temperature, dim=-1)
        pick = int(torch.multinomial(probs, 1, generator=self._generator))
        return int(ids[pick])


def apply_penalties(logits: torch.Tensor, recent: list[int], p: SamplingParams) -> torch.Tensor:
    """llama.cpp's penalties: repetition divides positive logits (multiplies negative
    ones), frequency subtracts per occurrence, presence once per token seen."""
    out = logits.clone()
    tokens, counts = torch.unique(torch.tensor(recent, dtype=torch.long), return_counts=True)
    seen = out[tokens]
    if p.repetition_penalty != 1.0:
        seen = torch.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
    seen = seen - counts.float() * p.frequency_penalty - p.presence_penalty
    out[tokens] = seen
    return out
