"""What each engine can do per device: a GPU that this llama.cpp build cannot offload to
is said so, and is not usable for GGUF models."""

from __future__ import annotations

import pytest

from cortex.neuron.runtime import devices
from cortex.neuron.runtime.devices import Device, EngineSupport, engine_support

CPU = Device("cpu", "EPYC", 24000, 2)
GPU = Device("cuda:0", "H100", 80000, 2)


def test_a_cpu_node_probes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> bool:
        raise AssertionError("probed llama.cpp on a CPU-only node")

    monkeypatch.setattr(devices, "_llamacpp_offloads", refuse)
    assert engine_support([CPU]) == {"cpu": EngineSupport("cpu", "cpu")}


@pytest.mark.parametrize(
    ("offloads", "torch", "gguf", "usable"),
    [(True, "cuda", "cuda", True), (False, "cpu-only torch", "cpu-only build", False)],
)
def test_gpus_are_described_by_the_builds(
    monkeypatch: pytest.MonkeyPatch, offloads: bool, torch: str, gguf: str, usable: bool
) -> None:
    monkeypatch.setattr(devices, "_llamacpp_offloads", lambda: offloads)
    monkeypatch.setattr(devices, "_torch_cuda", lambda: torch)
    support = engine_support([CPU, GPU])
    assert support["cuda:0"] == EngineSupport(gguf, torch)
    assert support["cuda:0"].gguf_usable is usable
    assert support["cpu"].gguf_usable


def test_this_install_is_probed_for_real() -> None:
    """The CPU build of the suite: llama.cpp cannot offload (a CUDA build would)."""
    import llama_cpp

    assert devices._llamacpp_offloads() is bool(llama_cpp.llama_supports_gpu_offload())
