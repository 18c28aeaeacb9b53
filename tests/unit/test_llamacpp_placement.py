"""The llama.cpp parameters that put a GGUF model where placement counted it."""

from __future__ import annotations

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
