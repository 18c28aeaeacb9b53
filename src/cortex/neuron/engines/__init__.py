"""Inference engines behind one protocol, chosen by the model file's format."""

from __future__ import annotations

from pathlib import Path

from cortex.errors import InvalidRequest
from cortex.neuron.engines.base import EngineFactory


def _llamacpp() -> EngineFactory:
    from cortex.neuron.engines.llamacpp.engine import LlamaCppEngine

    return LlamaCppEngine


def _dense() -> EngineFactory:
    try:
        from cortex.neuron.engines.dense.engine import create_dense_engine
    except ImportError as exc:
        raise InvalidRequest(
            f"dense safetensors checkpoints need torch and transformers on this node ({exc})"
        ) from None
    return create_dense_engine


# Registry: format name -> loader of the engine class. Imports stay lazy so a node
# without torch (say) still serves GGUF models.
ENGINES = {"gguf": _llamacpp, "safetensors": _dense}


def is_dense_checkpoint(path: Path) -> bool:
    """A directory holding ``config.json`` and ``*.safetensors`` weights, or one such file."""
    if path.suffix == ".safetensors":
        path = path.parent
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def engine_for(path: Path) -> EngineFactory:
    if path.suffix == ".gguf":
        return ENGINES["gguf"]()
    if is_dense_checkpoint(path):
        return ENGINES["safetensors"]()
    raise InvalidRequest(
        f"no engine serves '{path.name}' (supported: GGUF files, and directories holding "
        "config.json + *.safetensors)"
    )
