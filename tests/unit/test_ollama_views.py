"""What Ollama's /api/tags, /api/ps and /api/show say of a model from its profile alone
(gateway/views.py)."""

from __future__ import annotations

import pytest

from cortex.gateway.views import ollama_details, ollama_digest
from cortex.spec import BUNDLED_MODEL_SOURCE


@pytest.mark.parametrize(
    ("model_id", "source", "quant", "expected"),
    [
        ("smollm2-135m-instruct", BUNDLED_MODEL_SOURCE, None, ("gguf", "135M", "Q4_1")),
        ("qwen3-8b", "hf:Qwen/Qwen3-8B-GGUF", "Q4_K_M", ("gguf", "8B", "Q4_K_M")),
        ("llama", "file:/models/Llama-3.2-1B-Instruct-F16.gguf", None, ("gguf", "1B", "F16")),
        ("dense", "hf:HuggingFaceTB/SmolLM2-360M-Instruct", None, ("safetensors", "360M", "")),
        ("mystery", "file:/models/weights", None, ("safetensors", "", "")),
    ],
)
def test_details_from_the_names(
    model_id: str, source: str, quant: str | None, expected: tuple[str, str, str]
) -> None:
    details = ollama_details(model_id, source, quant)
    assert (details.format, details.parameter_size, details.quantization_level) == expected


def test_the_digest_is_stable_per_profile() -> None:
    assert ollama_digest("a", "file:/x") == ollama_digest("a", "file:/x")
    assert ollama_digest("a", "file:/x") != ollama_digest("a", "file:/y")
    assert len(ollama_digest("a", None)) == 64
