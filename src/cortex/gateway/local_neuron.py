"""A neuron run as a child process of the gateway (the embedded default).

The child dies with the gateway: it is stopped on exit, and on Linux the kernel
sends it SIGTERM should the gateway die without cleaning up (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import time

import httpx


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalNeuron:
    def __init__(self, name: str, load: list[str], extra_args: list[str] | None = None) -> None:
        self.name = name
        self.port = free_loopback_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "cortex.neuron.cli",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--name",
            name,
            *[arg for spec in load for arg in ("--load", spec)],
            *(extra_args or []),
        ]
        self._process = subprocess.Popen(
            command, preexec_fn=_die_with_parent if sys.platform == "linux" else None
        )

    def wait_healthy(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the local neuron exited with code {self._process.returncode}")
            try:
                if httpx.get(self.endpoint + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the local neuron did not answer within {timeout_s:.0f}s")

    def stop(self, timeout_s: float = 10) -> None:
        if self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    @property
    def pid(self) -> int:
        return self._process.pid
