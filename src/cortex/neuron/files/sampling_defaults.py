"""The sampling a model's own files recommend, read beside its weights.

GGUF: the ``general.sampling.*`` metadata keys (``gguf.Keys.General.SAMPLING_*``).
A checkpoint directory: ``generation_config.json``, where ``do_sample: false`` means
greedy decoding (temperature 0).

Advisory: a value out of a request's bounds, or an unreadable ``generation_config.json``,
is left out with a warning rather than refusing the load. Blocking (reads files): callers
on the event loop run it in a thread.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gguf.constants import Keys
from pydantic import ValidationError

from cortex.neuron.files.headers import read_gguf
from cortex.spec import SamplingDefaults

log = logging.getLogger("cortex.neuron.files.sampling_defaults")

# GGUF key -> SamplingDefaults field (llama.cpp's names for the same settings).
GGUF_KEYS = {
    Keys.General.SAMPLING_TEMP: "temperature",
    Keys.General.SAMPLING_TOP_P: "top_p",
    Keys.General.SAMPLING_TOP_K: "top_k",
    Keys.General.SAMPLING_MIN_P: "min_p",
    Keys.General.SAMPLING_PENALTY_REPEAT: "repetition_penalty",
}
GENERATION_CONFIG_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def read_sampling_defaults(path: Path) -> SamplingDefaults:
    """The defaults the model at ``path`` (a GGUF file or a checkpoint directory) carries;
    empty when it carries none."""
    if path.suffix == ".gguf":
        fields = read_gguf(path).fields
        found = {name: fields[key] for key, name in GGUF_KEYS.items() if key in fields}
    elif path.is_dir():
        found = _generation_config(path / "generation_config.json")
    else:
        found = {}
    return _valid(found, path)


def _generation_config(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable, its sampling defaults ignored: %s", file, exc)
        return {}
    if not isinstance(config, dict):
        return {}
    found = {key: config[key] for key in GENERATION_CONFIG_KEYS if config.get(key) is not None}
    if config.get("do_sample") is False:
        found["temperature"] = 0.0
    return found


def _valid(found: dict[str, Any], path: Path) -> SamplingDefaults:
    """The values a request could also have sent; GGUF's float32 rounded (0.9, not
    0.8999999761581421)."""
    kept: dict[str, Any] = {}
    for name, value in found.items():
        if isinstance(value, float):
            value = round(value, 6)
        try:
            SamplingDefaults.model_validate({name: value})
        except ValidationError:
            log.warning("%s: sampling default %s=%r out of bounds, ignored", path.name, name, value)
            continue
        kept[name] = value
    return SamplingDefaults.model_validate(kept)
