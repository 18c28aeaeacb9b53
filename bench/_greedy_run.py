"""One greedy generation through a ``LlamaCppEngine`` stepped in this thread, timed: what
the in-process benches (attention, KV type, speculative) each measure a run with."""

from __future__ import annotations

import time

from cortex.neuron.engines.base import Event, Finished, GenerationRequest, SamplingParams
from cortex.neuron.engines.llamacpp.engine import LlamaCppEngine


class Recorder:
    """An event sink keeping the text and stamping the first token and the end."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.finished: Finished | None = None
        self.end = 0.0
        self.text: list[str] = []

    def put(self, event: Event) -> None:
        now = time.perf_counter()
        if isinstance(event, Finished):
            self.finished, self.end = event, now
            return
        self.text.append(getattr(event, "text", ""))
        if self.first is None:
            self.first = now

    @property
    def decode_tok_s(self) -> float:
        """Tokens after the first over the time from the first to the last."""
        assert self.first is not None and self.finished is not None
        return (self.finished.completion_tokens - 1) / (self.end - self.first)


def run_greedy(
    engine: LlamaCppEngine, tokens: list[int], max_new: int, *, use_cache: bool = True
) -> Recorder:
    """Generates greedily after ``tokens`` until the request finishes."""
    sink = Recorder()
    greedy = SamplingParams(temperature=0.0)
    engine.submit(GenerationRequest(tokens, max_new, greedy, [], sink, use_cache=use_cache))
    while sink.finished is None:
        engine.step()
    assert sink.first is not None, "no token generated"
    return sink
