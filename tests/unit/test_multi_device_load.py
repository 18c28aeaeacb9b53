"""A neuron loading a model over several devices where the gateway placed it: the named
devices (contract 1.4), each checked and charged its share; fake files and engines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fakes import CPU, FakeFiles, spec_of

from cortex.errors import InsufficientMemory, InvalidRequest
from cortex.neuron.files.estimate import MemoryEstimate, device_shares
from cortex.neuron.runtime.manager import ModelFiles, ModelManager
from cortex.spec import ModelSpec


def manager_of(files: FakeFiles, cpu_tp_ranks: int) -> ModelManager:
    def estimate(path: Path, spec: ModelSpec) -> MemoryEstimate:
        whole = files.estimate(path, spec)
        return replace(whole, shares_mb=device_shares(whole, spec))

    model_files = ModelFiles(
        prepare=files.prepare,
        estimate=estimate,
        launch=files.launch,
        sampling_defaults=lambda _: files.file_sampling,
    )
    return ModelManager([CPU], 3000, files=model_files, cpu_tp_ranks=cpu_tp_ranks)


async def test_two_cpu_ranks_are_charged_their_shares_on_the_one_cpu(tmp_path: Path) -> None:
    files = FakeFiles(tmp_path)
    manager = manager_of(files, cpu_tp_ranks=2)
    try:
        (cpu,) = manager.devices_status()
        assert cpu.tp_ranks == 2  # what the gateway's rooms read
        model = await manager.load(spec_of("tp", tensor_parallel=2, memory_mb=2000), ["cpu", "cpu"])
        status = model.status()
        assert status.devices == ["cpu", "cpu"]
        assert status.device_memory_mb == {"cpu": 2000} and status.memory_mb == 2000
        assert manager.devices_status()[0].memory_used_by_models_mb == 2000
        # two more ranks of 600 MB: 1200 MB on the CPU, of the 1000 MB the budget has left
        with pytest.raises(InsufficientMemory) as refused:
            await manager.load(spec_of("tp2", tensor_parallel=2, memory_mb=1200), ["cpu", "cpu"])
        assert (refused.value.need_mb, refused.value.free_mb) == (1200, 1000)
        await manager.unload("tp")
        assert manager.devices_status()[0].memory_used_by_models_mb == 0
    finally:
        files.release_all()
        await manager.close()


async def test_devices_a_node_cannot_give_are_refused(tmp_path: Path) -> None:
    files = FakeFiles(tmp_path)
    manager = manager_of(files, cpu_tp_ranks=1)
    try:
        wide = spec_of("tp", tensor_parallel=2, memory_mb=200)
        with pytest.raises(InvalidRequest, match="more often than it may hold ranks"):
            await manager.load(wide, ["cpu", "cpu"])  # one CPU rank on this node
        with pytest.raises(InvalidRequest, match="no device cuda:0 on this node"):
            await manager.load(wide, ["cuda:0", "cpu"])
        with pytest.raises(InvalidRequest, match="3 devices named for a model of 2"):
            await manager.load(wide, ["cpu", "cpu", "cpu"])
        assert manager.statuses() == []
    finally:
        files.release_all()
        await manager.close()
