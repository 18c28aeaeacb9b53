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
