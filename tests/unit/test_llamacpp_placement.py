"""The llama.cpp parameters that put a GGUF model where placement counted it."""

from __future__ import annotations

import ctypes

import llama_cpp as C

from cortex.neuron.engines.llamacpp.engine import model_placement


def test_a_gpu_model_stays_on_its_one_gpu() -> None:
    params = model_placement("cuda:1", gpu_offload=True, use_extra_buffer_types=True)
    # every layer on GPU 1 and only there: llama.cpp's default layer split would spread
    # the model over every visible GPU while the gateway charged it to one
    assert params["n_gpu_layers"] == 999
    assert params["split_mode"] == C.LLAMA_SPLIT_MODE_NONE
    assert params["main_gpu"] == 1


def test_a_cpu_model_offloads_nothing() -> None:
    params = model_placement("cpu", gpu_offload=True, use_extra_buffer_types=True)
    assert params["n_gpu_layers"] == 0
    assert "main_gpu" not in params and "split_mode" not in params


def test_a_cpu_only_build_keeps_a_gpu_placed_model_on_the_cpu() -> None:
    params = model_placement("cuda:0", gpu_offload=False, use_extra_buffer_types=True)
    assert params["n_gpu_layers"] == 0


def test_extra_buffer_types_follow_the_choice() -> None:
    assert model_placement("cpu", False, True)["use_extra_bufts"] is True
    assert model_placement("cpu", False, False)["use_extra_bufts"] is False


def test_every_parameter_exists_on_llama_cpp_model_params() -> None:
    params = C.llama_model_default_params()
    for name, value in model_placement("cuda:0", True, False).items():
        setattr(params, name, value)
        assert getattr(params, name) == value


def test_a_layer_split_spreads_over_the_named_gpus_only() -> None:
    params = model_placement("cuda:1,cuda:3", True, False, split="layer")
    assert params["split_mode"] == C.LLAMA_SPLIT_MODE_LAYER
    assert params["main_gpu"] == 1 and params["n_gpu_layers"] == 999
    # equal shares on GPUs 1 and 3, none on 0 and 2 (llama.cpp then gives them no layer)
    assert params["tensor_split"] == [0.0, 1.0, 0.0, 1.0]


def test_a_row_split_uses_llama_cpps_row_mode() -> None:
    params = model_placement("cuda:0,cuda:1", True, False, split="row")
    assert params["split_mode"] == C.LLAMA_SPLIT_MODE_ROW
    assert params["tensor_split"] == [1.0, 1.0] and params["main_gpu"] == 0


def test_split_none_or_one_gpu_or_no_offload_never_splits() -> None:
    assert "tensor_split" not in model_placement("cuda:2", True, False, split="layer")
    assert model_placement("cuda:0,cuda:1", False, False, split="layer")["n_gpu_layers"] == 0


def test_the_tensor_split_fits_llama_cpps_array() -> None:
    params = C.llama_model_default_params()
    split = model_placement("cuda:0,cuda:1", True, False, split="layer")["tensor_split"]
    assert isinstance(split, list) and len(split) <= C.llama_max_devices()
    array = (ctypes.c_float * C.llama_max_devices())(*split)
    params.tensor_split = array
    assert [params.tensor_split[i] for i in range(len(split))] == split
