"""`cortex status`, once and `--watch`, over a real fleet: a real neuron that is up and a
configured one with nothing listening (down), behind a real gateway."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procs import BUNDLED, MODEL, Gateway, Neuron, free_port

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@pytest.fixture(scope="module")
def two_node_gateway(neuron: Neuron, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """``n1`` (the session's neuron, serving the bundled model) and ``n2`` (down)."""
    config = f"""
[gateway]
poll_interval_s = 0.5

[[neurons]]
name = "{neuron.name}"
endpoint = "{neuron.url}"

[[neurons]]
name = "n2"
endpoint = "http://127.0.0.1:{free_port()}"
"""
    models = f'[[models]]\nid = "{MODEL}"\nsource = "{BUNDLED}"\n'
    process = Gateway(tmp_path_factory.mktemp("status"), config, models, {MODEL})
    yield process
    process.stop()


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    return {**env, "COLUMNS": "200", "LINES": "80", **extra}


def test_status_shows_both_nodes_up_and_down(two_node_gateway: Gateway) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cortex.cli.main", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(CORTEX_GATEWAY=two_node_gateway.url),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    n1 = next(line for line in lines if line.startswith("n1 "))
    n2 = next(line for line in lines if line.startswith("n2 "))
    assert "up" in n1 and "down" in n2, done.stdout
    model_line = next(line for line in lines if line.strip().startswith(MODEL))
    assert "ready" in model_line and "in flight" in model_line and "queued" in model_line
    assert "memory" in done.stdout and "█" in done.stdout  # a device with its memory bar
    assert "in the last minute" in done.stdout


class Watch:
    """``cortex status --watch`` on a pseudo-terminal, as a person would run it."""

    def __init__(self, gateway_url: str, interval_s: float = 0.5) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 80, 200, 0, 0))
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "cortex.cli.main", "status", "--watch"),
                *("--interval", str(interval_s), "--gateway", gateway_url),
            ],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            env=cli_env(TERM="xterm-256color"),
        )
        os.close(slave)
        self._master = master
        self.output = ""

    def read_until(self, done: Callable[[str], bool], timeout_s: float = 30) -> str:
        """Reads the terminal until ``done(output)`` or the timeout; the plain text."""
        deadline = time.monotonic() + timeout_s
        while not done(self.output) and time.monotonic() < deadline:
            ready, _, _ = select.select([self._master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self._master, 65536)
                except OSError:  # the process has gone and closed the terminal
                    break
                self.output += ANSI.sub("", chunk.decode(errors="replace"))
        return self.output

    def stop(self, signum: int = signal.SIGINT) -> int:
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.read_until(lambda _: False, timeout_s=0.5)
        os.close(self._master)
        return code


def test_watch_refreshes_until_ctrl_c(two_node_gateway: Gateway) -> None:
    watch = Watch(two_node_gateway.url)
    try:
        watch.read_until(lambda out: out.count("refreshing every") >= 3)
        time.sleep(1)
        assert watch.proc.poll() is None, watch.output
    finally:
        code = watch.stop(signal.SIGINT)
    out = watch.output
    assert code == 0, out
    assert out.count("refreshing every 0.5s") >= 3, out  # several frames in ~3 s
    assert "n1" in out and "n2" in out and "up" in out and "down" in out
    assert MODEL in out and "ready" in out
    assert "Traceback" not in out


def test_watch_survives_an_unreachable_gateway(tmp_path: Path, neuron: Neuron) -> None:
    config = (
        f'[gateway]\npoll_interval_s = 0.5\n\n[[neurons]]\nname = "n1"\nendpoint = "{neuron.url}"\n'
    )
    gateway = Gateway(tmp_path, config, f'[[models]]\nid = "{MODEL}"\nsource = "{BUNDLED}"\n')
    watch = Watch(gateway.url)
    try:
        watch.read_until(lambda out: MODEL in out)
        assert "n1" in watch.output and "up" in watch.output
        gateway.stop()
        watch.read_until(lambda out: "unreachable" in out)
        assert "unreachable" in watch.output, watch.output
        time.sleep(1.5)  # it keeps trying rather than exiting
        assert watch.proc.poll() is None, watch.output
    finally:
        gateway.stop()
        code = watch.stop(signal.SIGTERM)
    assert code == 0, watch.output
    assert "retrying every 0.5s" in watch.output
    assert "Traceback" not in watch.output


def test_watch_starts_without_a_gateway() -> None:
    watch = Watch(f"http://127.0.0.1:{free_port()}")
    try:
        out = watch.read_until(lambda out: "retrying" in out)
        assert "unreachable" in out and "retrying every 0.5s" in out, out
    finally:
        code = watch.stop(signal.SIGINT)
    assert code == 0, watch.output
