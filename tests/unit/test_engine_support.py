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


def test_a_gguf_model_skips_a_gpu_llamacpp_cannot_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """The neuron's own choice: on a CPU-only llama.cpp build a GGUF model goes to the
    CPU, not to the GPU placement would otherwise count it against; dense still may."""
    from fakes import FakeFiles

    from cortex.neuron.runtime import manager as manager_module
    from cortex.neuron.runtime.manager import ModelManager

    monkeypatch.setattr(devices, "_llamacpp_offloads", lambda: False)
    monkeypatch.setattr(devices, "_torch_cuda", lambda: "cuda")
    monkeypatch.setattr(
        manager_module, "read_memory", lambda device: devices.MemoryReading(80000, 70000)
    )
    manager = ModelManager([CPU, GPU], None, files=FakeFiles(tmp_path).model_files())
    assert manager._pick_device(gguf=True) is CPU
    assert manager._pick_device(gguf=False) is GPU
    gpu_status = next(d for d in manager.devices_status() if d.id == "cuda:0")
    assert gpu_status.engines == {"gguf": "cpu-only build", "dense": "cuda"}
