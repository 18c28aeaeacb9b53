"""Preflight: the source classifier, the feasibility table and quant suggestions, as pure
functions over listings."""

from __future__ import annotations

import json

import pytest

from cortex.errors import PreflightRejected
from cortex.neuron.files.preflight import (
    MIB,
    classify,
    edit_distance,
    nearest_quant,
    plan,
    quant_label,
    quant_matches,
)
from cortex.protocol.errors import openai_error_body
from cortex.spec import ModelSpec

GGUF = [
    ("README.md", 5_000),
    ("model-Q4_K_M.gguf", 4_000 * MIB),
    ("model-Q6_K_P.gguf", 6_000 * MIB),
]
DENSE = [
    ("config.json", 700),
    ("generation_config.json", 100),
    ("tokenizer.json", 2 * MIB),
    ("tokenizer_config.json", 9_000),
    ("model-00001-of-00002.safetensors", 5_000 * MIB),
    ("model-00002-of-00002.safetensors", 3_000 * MIB),
    ("model.safetensors.index.json", 30_000),
    ("README.md", 5_000),
    (".gitattributes", 1_500),
]


def spec(**fields: object) -> ModelSpec:
    return ModelSpec(**{"id": "m", "source": "hf:org/repo", **fields})  # type: ignore[arg-type]


def rejected(listing: list[tuple[str, int]], **fields: object) -> PreflightRejected:
    devices = fields.pop("devices_available", 8)
    free_mb = fields.pop("free_mb", None)
    with pytest.raises(PreflightRejected) as caught:
        plan(spec(**fields), listing, devices_available=devices, free_mb=free_mb)  # type: ignore[arg-type]
    return caught.value


# -- classification ---------------------------------------------------------------------


def test_classify_each_format() -> None:
    assert classify(GGUF) == "gguf"
    assert classify(DENSE) == "dense_safetensors"
    assert classify(GGUF + DENSE) == "mixed"
    assert classify([("README.md", 1), ("config.json", 2)]) == "empty"
    assert classify([]) == "empty"


def test_projectors_and_nested_safetensors_are_not_model_weights() -> None:
    assert classify([("mmproj-model-f16.gguf", 1)]) == "empty"
    # safetensors below the top level are not the checkpoint (e.g. an adapter folder)
    assert classify([("adapters/lora.safetensors", 1), ("m-Q8_0.gguf", 1)]) == "gguf"


# -- quant names ----------------------------------------------------------------------------


def test_quant_labels_read_from_file_names() -> None:
    assert quant_label("Qwen3-8B-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_label("SmolLM2-135M-Instruct.Q4_1.gguf") == "Q4_1"
    assert quant_label("Q4_K_M/Qwen3-30B-A3B-UD-Q4_K_XL-00001-of-00002.gguf") == "Q4_K_XL"
    assert quant_label("model_IQ4_XS.gguf") == "IQ4_XS"


def test_quant_match_is_case_and_separator_blind_at_a_part_boundary() -> None:
    for quant in ("Q4_K_M", "q4_k_m", "Q4-K-M", "q4km"):
        assert quant_matches(quant, "Qwen3-8B-Q4_K_M.gguf")
    assert quant_matches("ud-q4_k_xl", "Qwen3-30B-A3B-UD-Q4_K_XL-00001-of-00002.gguf")
    assert not quant_matches("q6k", "model-Q6_K_P.gguf")  # a prefix of the quant, not it
    assert not quant_matches("Q4_K", "model-Q4_K_M.gguf")
    assert not quant_matches("K_M", "model-Q4_K_S.gguf")


def test_edit_distance() -> None:
    assert edit_distance("q6k", "q6kp") == 1
    assert edit_distance("", "abc") == 3
    assert edit_distance("kitten", "sitting") == 3


def test_nearest_quant_suggests_a_likely_typo_only() -> None:
    assert nearest_quant("q6k", ["Q4_K_M", "Q6_K_P"]) == "Q6_K_P"
    assert nearest_quant("q8-0", ["Q4_K_M", "Q8_0"]) == "Q8_0"
    assert nearest_quant("fp32", ["Q4_K_M", "Q6_K_P"]) is None
    assert nearest_quant("q4", []) is None


# -- the feasibility table -----------------------------------------------------------------


def test_gguf_with_tensor_parallel_is_rejected_with_the_fix() -> None:
    error = rejected(GGUF, tensor_parallel=2, quant="Q4_K_M")
    assert error.reason == "gguf_tensor_parallel" and error.status == 422
    assert "safetensors" in error.detail and "tensor_parallel = 1" in error.suggestion


def test_misspelled_quant_suggests_the_nearest() -> None:
    error = rejected(GGUF, quant="q6k")
    assert error.reason == "quant_not_found"
    assert 'quant = "Q6_K_P"' in error.suggestion and "Q4_K_M" in error.suggestion


def test_gguf_quant_picks_its_file_and_one_file_needs_none() -> None:
    chosen = plan(spec(quant="q4-k-m"), GGUF, devices_available=1, free_mb=None)
    assert chosen.format == "gguf" and chosen.entry == "model-Q4_K_M.gguf"
    assert chosen.files == ("model-Q4_K_M.gguf",) and chosen.weights_bytes == 4_000 * MIB
    one = [("a/SmolLM2-135M-Instruct.Q4_1.gguf", 10)]
    assert plan(spec(), one, devices_available=1, free_mb=None).entry == one[0][0]
    assert rejected(GGUF).reason == "quant_required"


def test_split_gguf_files_travel_together() -> None:
    listing = [
        ("Q8_0/m-Q8_0-00002-of-00002.gguf", 3 * MIB),
        ("Q8_0/m-Q8_0-00001-of-00002.gguf", 5 * MIB),
        ("m-Q4_K_M.gguf", 4 * MIB),
        ("mmproj-F16.gguf", 1 * MIB),
    ]
    chosen = plan(spec(quant="q8_0"), listing, devices_available=1, free_mb=None)
    assert chosen.entry == "Q8_0/m-Q8_0-00001-of-00002.gguf"
    assert chosen.files == (
        "Q8_0/m-Q8_0-00001-of-00002.gguf",
        "Q8_0/m-Q8_0-00002-of-00002.gguf",
    )
    assert chosen.weights_bytes == 8 * MIB


def test_ambiguous_quant_is_rejected() -> None:
    listing = [("a/m-Q4_0.gguf", 1), ("b/m-Q4_0.gguf", 1)]
    assert rejected(listing, quant="Q4_0").reason == "quant_ambiguous"


def test_dense_checkpoint_with_tensor_parallel() -> None:
    chosen = plan(spec(tensor_parallel=2), DENSE, devices_available=2, free_mb=None)
    assert chosen.format == "dense_safetensors" and chosen.entry is None
    assert chosen.weights_bytes == 8_000 * MIB
    assert "config.json" in chosen.files and "tokenizer.json" in chosen.files
    assert "model.safetensors.index.json" in chosen.files
    assert "README.md" not in chosen.files and ".gitattributes" not in chosen.files
    assert rejected(DENSE, quant="Q4_K_M").reason == "quant_without_gguf"


def test_consolidated_duplicate_weights_are_skipped() -> None:
    listing = [*DENSE, ("consolidated.safetensors", 8_000 * MIB)]
    chosen = plan(spec(), listing, devices_available=1, free_mb=None)
    assert "consolidated.safetensors" not in chosen.files
    assert chosen.weights_bytes == 8_000 * MIB


def test_mixed_prefers_safetensors_for_tp_and_gguf_for_a_quant() -> None:
    mixed = GGUF + DENSE
    with_quant = plan(spec(quant="Q6_K_P"), mixed, devices_available=1, free_mb=None)
    assert with_quant.format == "gguf" and with_quant.entry == "model-Q6_K_P.gguf"
    tp = plan(spec(tensor_parallel=2, quant="Q6_K_P"), mixed, devices_available=2, free_mb=None)
    assert tp.format == "dense_safetensors" and "quant ignored" in (tp.note or "")
    neither = plan(spec(), mixed, devices_available=1, free_mb=None)
    assert neither.format == "dense_safetensors"
    assert "set quant" in (neither.note or "") and "Q4_K_M" in (neither.note or "")


def test_empty_source_is_rejected() -> None:
    error = rejected([("README.md", 10), (".gitattributes", 5)])
    assert error.reason == "empty_source" and "README.md" in error.detail


def test_more_ranks_than_devices_is_rejected() -> None:
    error = rejected(DENSE, tensor_parallel=4, devices_available=2)
    assert error.reason == "too_many_ranks" and "at most 2" in error.suggestion
    # no device count given (an estimate): not checked
    plan(spec(tensor_parallel=4), DENSE, devices_available=None, free_mb=None)


def test_weights_larger_than_the_device_are_rejected_with_smaller_quants() -> None:
    error = rejected(GGUF, quant="Q6_K_P", free_mb=5_000)
    assert error.reason == "insufficient_memory"
    assert "6000 MB" in error.detail and "5000 MB" in error.detail
    assert "Q4_K_M" in error.suggestion
    plan(spec(quant="Q4_K_M"), GGUF, devices_available=1, free_mb=5_000)
    # tensor parallel splits the weights over the ranks
    plan(spec(tensor_parallel=2), DENSE, devices_available=2, free_mb=4_000)
    assert rejected(DENSE, tensor_parallel=2, free_mb=3_999).reason == "insufficient_memory"


# -- the error on the wire -------------------------------------------------------------------


def test_rejection_serialises_structured_inside_the_openai_envelope() -> None:
    body = openai_error_body(rejected(GGUF, tensor_parallel=2))
    error = json.loads(json.dumps(body))["error"]
    assert error["kind"] == "gguf_tensor_parallel" and error["model_id"] == "m"
    assert error["detail"] and error["suggestion"]
    assert error["type"] == "invalid_request_error" and error["code"] == "gguf_tensor_parallel"
    assert error["message"] == f"{error['detail']} {error['suggestion']}"
    assert error["param"] == "source"


# -- a GGUF split over several GPUs ------------------------------------------------------------


def split_rejected(
    listing: list[tuple[str, int]], gpus: int, **fields: object
) -> PreflightRejected:
    with pytest.raises(PreflightRejected) as caught:
        plan(spec(**fields), listing, devices_available=8, free_mb=None, gpus=gpus)
    return caught.value


def test_a_split_on_a_cpu_only_node_is_refused_saying_so() -> None:
    error = split_rejected(GGUF, 0, quant="Q4_K_M", split="layer", devices=2)
    assert error.reason == "split_needs_gpus"
    assert 'split = "layer" over devices = 2 needs 2 GPUs' in error.detail
    assert "no GPU llama.cpp can use" in error.detail
    assert 'split = "none"' in error.suggestion


def test_a_split_over_more_gpus_than_the_node_has_is_refused() -> None:
    error = split_rejected(GGUF, 2, quant="Q4_K_M", split="row", devices=4)
    assert error.reason == "split_needs_gpus" and "only 2 GPU(s)" in error.detail
    assert "at most 2" in error.suggestion
    chosen = plan(
        spec(quant="Q4_K_M", split="row", devices=2),
        GGUF,
        devices_available=2,
        free_mb=None,
        gpus=2,
    )
    assert chosen.format == "gguf"


def test_a_split_of_dense_weights_is_refused_and_points_at_tensor_parallel() -> None:
    error = split_rejected(DENSE, 4, split="layer", devices=2)
    assert error.reason == "split_not_gguf" and "tensor_parallel" in error.suggestion


def test_a_split_divides_the_weights_over_its_gpus() -> None:
    # 6000 MB of weights over 2 GPUs of 3500 MB each: 3000 MB per GPU fits
    chosen = spec(quant="Q6_K_P", split="layer", devices=2)
    plan(chosen, GGUF, devices_available=2, free_mb=3_500, gpus=2)
    error = rejected(GGUF, quant="Q6_K_P", split="layer", devices=2, free_mb=2_999)
    assert error.reason == "insufficient_memory" and "per GPU over 2 GPUs" in error.detail


def test_split_and_devices_must_agree_in_the_spec() -> None:
    for fields in (
        {"devices": 2},
        {"split": "layer"},
        {"split": "row", "devices": 2, "tensor_parallel": 2},
    ):
        with pytest.raises(ValueError):
            spec(**fields)
    assert spec(split="layer", devices=3).width == 3 and spec(tensor_parallel=2).width == 2
