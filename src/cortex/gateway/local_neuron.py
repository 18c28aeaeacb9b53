"""A neuron run as a child process of the gateway (the embedded default), supervised.

The child dies with the gateway: it is stopped on exit, and on Linux the kernel
sends it SIGTERM should the gateway die without cleaning up (PR_SET_PDEATHSIG).
While the gateway runs, a supervisor thread watches it: a child that exits, or stops
answering ``/health``, is killed and started again on the same port, after a backoff
that doubles from 1 s up to 30 s (reset once it has run well for a minute). Meanwhile
the gateway's poller sees the node down and requests get 503 + Retry-After; once it is
back, the poller sees it up and the pinned model loads again.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

from cortex.lifetime import die_with_parent

log = logging.getLogger("cortex.gateway.local_neuron")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_RESET_S = 60.0  # running well this long forgets earlier failures
MISSED_HEALTH_CHECKS = 3  # a frozen neuron (SIGSTOP, a wedged loop) after this many


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    die_with_parent(signal.SIGTERM)  # a clean stop: the neuron closes its engines


class LocalNeuron:
    def __init__(self, name: str, load: list[str], extra_args: list[str] | None = None) -> None:
        self.name = name
        self.port = free_loopback_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # A fresh token per run, handed over in the environment (argv shows in ps): other
        # local users cannot drive the neuron past the gateway's keys.
        self.token = secrets.token_urlsafe(32)
        self.restarts = 0
        self._command = [
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
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self._command,
            env={**os.environ, "NEURON_TOKEN": self.token},
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def wait_healthy(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the local neuron exited with code {self._process.returncode}")
            if self._healthy(1.0):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the local neuron did not answer within {timeout_s:.0f}s")

    def supervise(self, period_s: float = 1.0) -> None:
        """Start watching the child; it is restarted whenever it exits or freezes."""
        self._supervisor = threading.Thread(
            target=self._watch, args=(period_s,), name="local-neuron-supervisor", daemon=True
        )
        self._supervisor.start()

    def stop(self, timeout_s: float = 10) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout_s)
        self._terminate(timeout_s)

    @property
    def pid(self) -> int:
        return self._process.pid

    # -- the supervisor thread ---------------------------------------------------------

    def _healthy(self, timeout_s: float) -> bool:
        try:
            return httpx.get(self.endpoint + "/health", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def _watch(self, period_s: float) -> None:
        backoff = BACKOFF_FIRST_S
        started = time.monotonic()
        missed = 0
        while not self._stopping.wait(period_s):
            code = self._process.poll()
            if code is None:
                missed = 0 if self._healthy(max(period_s, 2.0)) else missed + 1
                if missed < MISSED_HEALTH_CHECKS:
                    if time.monotonic() - started > HEALTHY_RESET_S:
                        backoff = BACKOFF_FIRST_S
                    continue
                reason = f"no answer to {missed} health checks"
            else:
                reason = f"exited with code {code}"
            log.error(
                "local neuron pid=%d %s: restarting in %.0f s", self._process.pid, reason, backoff
            )
            self._terminate(5)
            if self._stopping.wait(backoff):
                return
            self._process = self._start()
            self.restarts += 1
            started, missed = time.monotonic(), 0
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            log.info("local neuron restarted pid=%d restarts=%d", self._process.pid, self.restarts)

    def _terminate(self, timeout_s: float) -> None:
        process = self._process
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
