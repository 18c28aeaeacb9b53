"""Inference engines behind one protocol, chosen by the model file's format."""

from __future__ import annotations

from pathlib import Path

from cortex.errors import InvalidRequest
from cortex.neuron.engines.base import EngineFactory


def _llamacpp() -> EngineFactory:
    from cortex.neuron.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine


# Registry: format name -> loader of the engine class. Imports stay lazy so a node
# without torch (say) still serves GGUF models.
ENGINES = {"gguf": _llamacpp}


def engine_for(path: Path) -> EngineFactory:
    if path.suffix == ".gguf":
        return ENGINES["gguf"]()
    raise InvalidRequest(f"no engine serves '{path.name}' (supported: GGUF files)")
