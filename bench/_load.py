"""Readings of the machine and of the CPU that processes outside the benchmark use."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil


def machine_info() -> dict[str, Any]:
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = row.partition(":")
            fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields:
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    extra = sum(getattr(t, name, 0.0) for name in ("irq", "softirq", "steal"))
    return t.user + t.nice + t.system + extra  # steal: the hypervisor gave our cores away


def _own_seconds(pids: list[int]) -> float:
    """CPU seconds of ``pids`` and their descendants: a neuron's engine processes are its
    children, and their work is the benchmark's, not another user's."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for process in (root, *root.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    t = process.cpu_times()
                    total += t.user + t.system
    return total


class ForeignLoad:
    """Accumulates the CPU (in cores) that processes other than ``pids`` use while timed."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.foreign_s = 0.0
        self.wall_s = 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        busy, own, t0 = _busy_seconds(), _own_seconds(self.pids), time.perf_counter()
        try:
            yield
        finally:
            own_delta = _own_seconds(self.pids) - own
            self.foreign_s += max(0.0, _busy_seconds() - busy - own_delta)
            self.wall_s += time.perf_counter() - t0

    @property
    def cores(self) -> float:
        return self.foreign_s / self.wall_s if self.wall_s else 0.0


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.25) -> float:
    """Wait (up to ``max_wait_s``) until the machine is nearly idle; return the last load."""
    deadline = time.monotonic() + max_wait_s
    while True:
        load = psutil.cpu_percent(interval=1.0) / 100 * (os.cpu_count() or 1)
        if load < threshold_cores or time.monotonic() >= deadline:
            return load
