"""Device discovery and memory readings: the CPU always, NVIDIA GPUs when present."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Device:
    id: str  # "cpu" or "cuda:N"
    name: str
    memory_total_mb: int
    threads: int  # compute threads an engine on this device should use


@dataclass(frozen=True)
class MemoryReading:
    total_mb: int
    free_mb: int


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def _meminfo() -> MemoryReading:
    try:
        fields = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0])  # kB
        return MemoryReading(fields["MemTotal"] // 1024, fields["MemAvailable"] // 1024)
    except (OSError, KeyError, ValueError):
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        total = pages * size // 2**20
        return MemoryReading(total, total)


def _nvml():
    """The NVML module when an NVIDIA driver answers, else None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no library, no driver, no GPU: all mean "no CUDA devices"
        return None


def discover() -> list[Device]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    devices = [Device("cpu", f"{_cpu_name()} ({cores} cores)", _meminfo().total_mb, cores or 1)]
    nvml = _nvml()
    if nvml is not None:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(
                Device(
                    f"cuda:{index}",
                    name.decode() if isinstance(name, bytes) else name,
                    memory.total // 2**20,
                    cores or 1,
                )
            )
    return devices


@dataclass(frozen=True)
class EngineSupport:
    """What each engine can do on one device, as this install was built."""

    gguf: str  # "cpu", "cuda", or "cpu-only build" (a GPU llama.cpp cannot offload to)
    dense: str  # "cpu", "cuda", "cpu-only torch", or "not installed"

    @property
    def gguf_usable(self) -> bool:
        return self.gguf in ("cpu", "cuda")


REBUILD_HINT = "rebuild with CUDA: CORTEX_GPU=cuda scripts/setup.sh (needs the CUDA toolkit's nvcc)"


def engine_support(found: list[Device]) -> dict[str, EngineSupport]:
    """Per device id. The probes import llama.cpp and torch, so they run only on a node
    that has GPUs: a CPU node pays nothing at start-up."""
    support = {d.id: EngineSupport("cpu", "cpu") for d in found if d.id == "cpu"}
    gpus = [d for d in found if d.id != "cpu"]
    if not gpus:
        return support
    gguf = "cuda" if _llamacpp_offloads() else "cpu-only build"
    dense = _torch_cuda()
    return support | {gpu.id: EngineSupport(gguf, dense) for gpu in gpus}


def _llamacpp_offloads() -> bool:
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # no llama.cpp at all: it cannot offload either
        return False


def _torch_cuda() -> str:
    try:
        import torch
    except ImportError:
        return "not installed"
    if torch.version.cuda is None:
        return "cpu-only torch"
    return "cuda" if torch.cuda.is_available() else "cpu-only torch"


def host_memory() -> MemoryReading:
    """The host's RAM, total and available now."""
    return _meminfo()


def read_memory(device: Device) -> MemoryReading:
    if device.id == "cpu":
        return _meminfo()
    nvml = _nvml()
    if nvml is None:
        return MemoryReading(device.memory_total_mb, 0)
    memory = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(int(device.id[5:])))
    return MemoryReading(memory.total // 2**20, memory.free // 2**20)
