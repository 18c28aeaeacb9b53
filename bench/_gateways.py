"""The gateways under test, as child processes in front of the fast upstream.

Both check an API key on every request, as a deployment would (the same key, made per run).

- cortex: ``cortex serve`` from this virtualenv, with a config that names the upstream
  as its one neuron (and a models.toml profile for its model, as an operator would write).
- LiteLLM's proxy (``litellm[proxy]``, pinned), from its own virtualenv
  ``bench/.venv-litellm``, made on first use: its dependencies must not mix with cortex's.
  One uvicorn worker (the CLI's default), a master key (it refuses to start without one),
  no database, no callbacks, spend and error logs off; its remote fetches (the model cost
  map and other lists) read the copies bundled in the package instead; logging at ERROR,
  which also silences uvicorn's access log. (Its telemetry flag is a no-op in this version.)
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from _fast_upstream import MODEL_ID, MODEL_SOURCE
from _procs import Server, free_port

# 1.107.0 was a compromised release (pulled); the later ones need a `litellm-proxy` package
# that the package index here does not carry.
LITELLM_VERSION = "1.106.12"
LITELLM_VENV = Path(__file__).resolve().parent / ".venv-litellm"
LITELLM_INSTALLED = LITELLM_VENV / ".bench-installed"

LITELLM_ENV = {
    "LITELLM_LOG": "ERROR",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
}

CORTEX_CONFIG = """\
[gateway]
api_keys = ["{api_key}"]

[[neurons]]
name = "fast"
endpoint = "{upstream}"
"""

LITELLM_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {upstream}/v1
      api_key: sk-bench-dummy
litellm_settings:
  set_verbose: false
  request_timeout: 600
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
"""


class GatewayUnavailable(Exception):
    """A gateway could not be installed or started; the message says why."""


def _ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def _lists_model(api_key: str) -> Callable[[httpx.Client], bool]:
    def ready(client: httpx.Client) -> bool:
        answer = client.get("/v1/models", headers={"Authorization": f"Bearer {api_key}"})
        return any(card["id"] == MODEL_ID for card in answer.json()["data"])

    return ready


def start_cortex(
    stack: contextlib.ExitStack,
    log_dir: Path,
    upstream: Server,
    api_key: str,
    command: list[str] | None = None,
) -> Server:
    """``cortex serve`` in front of ``upstream``; ``command`` replaces the ``cortex`` script
    (``gateway_profile.py`` runs the CLI under cProfile)."""
    port, metrics_port = _ports()
    config, models = log_dir / "cortex.toml", log_dir / "models.toml"
    config.write_text(CORTEX_CONFIG.format(api_key=api_key, upstream=upstream.url))
    models.write_text(f'[[models]]\nid = "{MODEL_ID}"\nsource = "{MODEL_SOURCE}"\n')
    argv = [*(command or [str(Path(sys.executable).parent / "cortex")])]
    argv += ["serve", "--config", str(config), "--models", str(models)]
    argv += ["--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    server = Server("cortex", [*argv, "--log-format", "text"], port, log_dir)
    stack.callback(server.stop)
    server.wait_until(_lists_model(api_key), timeout_s=60)
    return server


def cortex_source() -> dict[str, str]:
    """Which cortex was measured: the commit, and a digest of the gateway's source as it
    was on disk (the working tree may differ from the commit)."""
    root = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    status = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True, text=True)
    digest = hashlib.sha256()
    for path in sorted((root / "src" / "cortex").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "commit": commit.stdout.strip() or "unknown",
        "src_modified": "yes" if status.stdout.strip() else "no",
        "src_sha256": digest.hexdigest()[:16],
    }


def ensure_litellm(log_dir: Path, say: Callable[[str], None] = print) -> Path:
    """The ``litellm`` command of ``bench/.venv-litellm``, made first if missing."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    if litellm.exists() and _installed_version() == LITELLM_VERSION:
        return litellm
    say(
        f"creating {LITELLM_VENV} with litellm[proxy]=={LITELLM_VERSION} "
        "(first run only, a few minutes)"
    )
    log = log_dir / "litellm_install.log"
    steps = [
        [sys.executable, "-m", "venv", str(LITELLM_VENV)],
        [str(LITELLM_VENV / "bin" / "pip"), "install", f"litellm[proxy]=={LITELLM_VERSION}"],
    ]
    with log.open("wb") as out:
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                lines = log.read_text(errors="replace").splitlines()[-5:]
                tail = "\n".join(line[:300] for line in lines)
                raise GatewayUnavailable(f"could not install LiteLLM ({' '.join(step)}):\n{tail}")
    LITELLM_INSTALLED.write_text(LITELLM_VERSION + "\n")
    return litellm


def _installed_version() -> str | None:
    try:
        return LITELLM_INSTALLED.read_text().strip()
    except OSError:
        return None


def start_litellm(
    stack: contextlib.ExitStack, log_dir: Path, upstream: Server, api_key: str, litellm: Path
) -> Server:
    port = free_port()
    config = log_dir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(model=MODEL_ID, upstream=upstream.url))
    argv = [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    env = {**LITELLM_ENV, "LITELLM_MASTER_KEY": api_key}
    server = Server("litellm", [*argv, "--num_workers", "1"], port, log_dir, env)
    stack.callback(server.stop)
    try:
        server.wait_until(_lists_model(api_key), timeout_s=180)
    except RuntimeError as exc:
        server.stop()
        raise GatewayUnavailable(f"LiteLLM's proxy did not start: {exc}") from exc
    return server
