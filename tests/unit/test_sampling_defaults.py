"""Per-model sampling defaults: read from the model's files, set in models.toml, and
applied to the fields a request leaves out (request > models.toml > file > engine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeFiles, running_manager, spec_of
from gguf import GGUFWriter
from pydantic import ValidationError
from rich.console import Console

from cortex.cli.views import render_models
from cortex.neuron.api.generation import sampling_of
from cortex.neuron.engines.base import SamplingParams
from cortex.neuron.files.sampling_defaults import read_sampling_defaults
from cortex.protocol.fleet import ModelListing
from cortex.protocol.openai import ChatCompletionRequest
from cortex.spec import ModelSpec, SamplingDefaults

# -- the model file's own -----------------------------------------------------------------


def _gguf(path: Path, **sampling: float) -> Path:
    """A GGUF file holding only metadata: the architecture and ``general.sampling.*``."""
    writer = GGUFWriter(path, "llama")
    for name, value in sampling.items():
        getattr(writer, f"add_sampling_{name}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_sampling_keys_are_read(tmp_path: Path) -> None:
    path = _gguf(
        tmp_path / "m.gguf", temp=0.6, top_p=0.95, top_k=20, min_p=0.05, penalty_repeat=1.1
    )
    assert read_sampling_defaults(path) == SamplingDefaults(
        temperature=0.6, top_p=0.95, top_k=20, min_p=0.05, repetition_penalty=1.1
    )  # float32 in the file, rounded back: 0.6, not 0.6000000238418579


def test_a_gguf_without_sampling_keys_has_no_defaults(tmp_path: Path) -> None:
    assert read_sampling_defaults(_gguf(tmp_path / "m.gguf")).is_empty()


def test_a_gguf_value_out_of_bounds_is_left_out(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "m.gguf", temp=0.7, top_p=1.5)
    assert read_sampling_defaults(path) == SamplingDefaults(temperature=0.7)


def _checkpoint(tmp_path: Path, generation_config: dict[str, Any] | str | None) -> Path:
    if generation_config is not None:
        text = generation_config if isinstance(generation_config, str) else None
        (tmp_path / "generation_config.json").write_text(text or json.dumps(generation_config))
    return tmp_path


def test_generation_config_is_read(tmp_path: Path) -> None:
    config = {
        "bos_token_id": 1,
        "eos_token_id": [2, 3],
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "repetition_penalty": 1.05,
    }
    assert read_sampling_defaults(_checkpoint(tmp_path, config)) == SamplingDefaults(
        temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05
    )


def test_do_sample_false_means_greedy(tmp_path: Path) -> None:
    config = {"do_sample": False, "temperature": 0.6, "top_p": 0.9}
    defaults = read_sampling_defaults(_checkpoint(tmp_path, config))
    assert (defaults.temperature, defaults.top_p) == (0.0, 0.9)


@pytest.mark.parametrize("config", [None, {"eos_token_id": 2}, "{not json", "[1, 2]"])
def test_no_or_unreadable_generation_config_gives_no_defaults(tmp_path: Path, config: Any) -> None:
    assert read_sampling_defaults(_checkpoint(tmp_path, config)).is_empty()


# -- models.toml ----------------------------------------------------------------------------


def test_the_spec_takes_sampling_and_refuses_unknown_keys() -> None:
    spec = ModelSpec(id="m", source="file:/m.gguf", sampling={"temperature": 0.2, "top_p": 0.9})
    assert spec.sampling == SamplingDefaults(temperature=0.2, top_p=0.9)
    with pytest.raises(ValidationError, match="temp"):
        ModelSpec(id="m", source="file:/m.gguf", sampling={"temp": 0.2})
    with pytest.raises(ValidationError, match="temperature"):
        ModelSpec(id="m", source="file:/m.gguf", sampling={"temperature": 3})


def test_over_takes_each_field_from_the_top_layer_that_sets_it() -> None:
    toml = SamplingDefaults(temperature=0.2)
    file = SamplingDefaults(temperature=0.6, top_k=20)
    assert toml.over(file) == SamplingDefaults(temperature=0.2, top_k=20)


# -- precedence: request > models.toml > model file > engine ----------------------------------


def _request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], **fields}
    )


async def _sampling(
    tmp_path: Path, toml: dict[str, Any] | None, file: SamplingDefaults, **request: Any
) -> SamplingParams:
    files = FakeFiles(tmp_path, file_sampling=file)
    async with running_manager(files) as manager:
        await manager.load(spec_of("m", sampling=toml))
        return sampling_of(manager.ready("m"), _request(**request), "root ::= x")


async def test_with_no_defaults_anywhere_the_engine_defaults_apply(tmp_path: Path) -> None:
    got = await _sampling(tmp_path, None, SamplingDefaults())
    assert got == SamplingParams(grammar="root ::= x")  # temperature 1, top_p 1, the rest off


async def test_each_field_from_the_first_layer_that_sets_it(tmp_path: Path) -> None:
    file = SamplingDefaults(temperature=0.6, top_p=0.95, top_k=20, min_p=0.05)
    toml = {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1}
    got = await _sampling(tmp_path, toml, file, temperature=0.9, seed=7)
    assert got == SamplingParams(
        temperature=0.9,  # the request's
        top_p=0.9,  # models.toml's, over the file's 0.95
        top_k=20,  # the file's
        min_p=0.05,  # the file's
        repetition_penalty=1.1,  # models.toml's
        presence_penalty=0.0,  # the engine's
        frequency_penalty=0.0,  # the engine's
        seed=7,
        grammar="root ::= x",
    )


async def test_a_request_that_sends_zero_still_wins(tmp_path: Path) -> None:
    file = SamplingDefaults(top_k=40, presence_penalty=1.5)
    got = await _sampling(
        tmp_path, {"temperature": 0.7}, file, temperature=0, top_k=0, presence_penalty=0
    )
    assert (got.temperature, got.top_k, got.presence_penalty) == (0, 0, 0)


async def test_status_reports_the_defaults_in_force(tmp_path: Path) -> None:
    files = FakeFiles(tmp_path, file_sampling=SamplingDefaults(temperature=0.6, top_k=20))
    async with running_manager(files) as manager:
        loaded = await manager.load(spec_of("m", sampling={"temperature": 0}))
        plain = await manager.load(spec_of("plain"))
        assert loaded.status().sampling_defaults == SamplingDefaults(temperature=0, top_k=20)
        files.file_sampling = SamplingDefaults()
        bare = await manager.load(spec_of("bare"))
        assert plain.status().sampling_defaults == SamplingDefaults(temperature=0.6, top_k=20)
        assert bare.status().sampling_defaults is None  # nothing set: the engine's apply


# -- cortex models -----------------------------------------------------------------------------


def _listed(model_id: str, defaults: dict[str, Any] | None) -> dict[str, Any]:
    """One card of ``GET /v1/models`` in a gateway's JSON."""
    return {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "cortex",
        "source": None,
        "aliases": [],
        "pinned": False,
        "priority": None,
        "context_length": None,
        "nodes_allowed": [],
        "memory_estimate_mb": None,
        "loaded_on": [],
        "placements": [],
        "sampling_defaults": defaults,
    }


def test_cortex_models_shows_the_defaults() -> None:
    data = [_listed("tuned", {"temperature": 0.2, "top_k": 20}), _listed("plain", None)]
    console = Console(record=True, width=160)
    render_models(ModelListing.model_validate({"data": data}), console)
    text = console.export_text()
    assert "sampling defaults" in text
    assert "temperature=0.2, top_k=20" in text
