"""The Codex CLI itself, headless (``codex exec --json``), against a real gateway and
neuron through the OpenAI Responses API (``wire_api = "responses"``).

``scripts/codex.sh`` installs the pinned version into ``.cache/codex`` (``scripts/test``
runs it); where it is missing these tests skip and say why (fail with ``CI=true``).
Codex runs with a temporary HOME and CODEX_HOME (nothing of the developer's is read or
written), no analytics, no update check, and a model provider pointing at the gateway.

The bundled 135M model (context 4096 here) cannot hold Codex's default request (~40 KB:
its instructions, skills, sub-agent tools; about 8.8k tokens), so one test checks that
Codex reports the overflow, and the others shrink the request with Codex's own settings
(``model_instructions_file`` and features turned off: ``SMALL`` below, each checked
with ``--strict-config``). The model samples greedily (``sampling = { temperature = 0 }``
in its spec; Codex sends no temperature) and the neuron keeps no prefix cache, so each
prompt gets the same answer on every run. The gateway and neuron are this module's own,
for those settings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

import required
from procs import BUNDLED, MODEL, Gateway, Neuron, gateway_config, metric

pytestmark = pytest.mark.slow

CODEX = Path(__file__).resolve().parents[2] / ".cache/codex/node_modules/.bin/codex"
VERSION = "codex-cli 0.169.0"
QUESTION = "What is the capital of France?"
# Codex's own way to say that the provider refused the prompt as too long (the error
# code context_length_exceeded); it prints this instead of the provider's message.
CONTEXT_FULL = "ran out of room in the model's context window"
# The request cut down to what a 4096-token context holds (~500 tokens with no tools):
# short instructions in place of Codex's ~17 KB, no skills, goals, sub-agents,
# image viewer, environment context or hosted web search.
SMALL = [
    "-c", "web_search=\"disabled\"",
    "-c", "skills.include_instructions=false",
    "-c", "include_environment_context=false",
    "-c", "include_permissions_instructions=false",
    "--disable", "multi_agent",
    "--disable", "goals",
    "--disable", "view_image",
    "--disable", "default_mode_request_user_input",
]  # fmt: skip
SPEC = {
    "id": MODEL,
    "source": BUNDLED,
    "context_length": 4096,
    "max_batch": 1,
    "prefix_cache": False,  # a reused KV cache may part from a fresh one at a near tie
    "sampling": {"temperature": 0},
    "flash_attention": True,  # the answers below were read under it
}
MODELS = f"""
[[models]]
id = "{MODEL}"
source = "{BUNDLED}"
context_length = 4096
max_batch = 1
prefix_cache = false
sampling = {{ temperature = 0 }}
flash_attention = true
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    """A neuron with the bundled model loaded greedy, and a gateway in front of it."""
    tmp = tmp_path_factory.mktemp("codex")
    node = Neuron(tmp, "cx1", [])
    try:
        answer = httpx.post(node.url + "/models/load", json=SPEC, timeout=120)
        assert answer.status_code == 200, answer.text
        process = Gateway(tmp, gateway_config(node), MODELS, {MODEL})
    except BaseException:
        node.stop()
        raise
    yield process
    process.stop()
    node.stop()


@pytest.fixture(scope="module")
def codex() -> Path:
    if not CODEX.exists():
        if shutil.which("npm") is None or shutil.which("node") is None:
            required.missing("Codex CLI cannot be installed here: node and npm are not on PATH")
        required.missing("Codex CLI is not installed: run scripts/codex.sh (scripts/test does)")
    version = subprocess.run([str(CODEX), "--version"], capture_output=True, text=True)
    if version.returncode != 0 or version.stdout.strip() != VERSION:
        required.missing(f"{CODEX} does not run as {VERSION}: {version.stderr.strip()[-300:]}")
    return CODEX


class Run:
    """One ``codex exec --json`` run: its exit code, events and output."""

    def __init__(self, process: subprocess.CompletedProcess[str]) -> None:
        self.returncode = process.returncode
        self.output = process.stdout + process.stderr
        self.events: list[dict[str, Any]] = [
            json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")
        ]

    def items(self, kind: str) -> list[dict[str, Any]]:
        return [
            e["item"]
            for e in self.events
            if e["type"] == "item.completed" and e["item"]["type"] == kind
        ]


def _codex(codex: Path, gateway: Gateway, tmp: Path, prompt: str, *flags: str) -> Run:
    home = tmp / "home"
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    # The README's provider block, and nothing that reaches out of the machine.
    (home / ".codex/config.toml").write_text(f"""
model = "{MODEL}"
model_provider = "cortex"
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.cortex]
name = "cortex"
base_url = "{gateway.url}/v1"
env_key = "CORTEX_API_KEY"
wire_api = "responses"
""")
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),  # node runs Codex's launcher
        "HOME": str(home),
        "CODEX_HOME": str(home / ".codex"),
        "CORTEX_API_KEY": "unused",
    }
    command = [str(codex), "exec", "--json", "--skip-git-repo-check", "--ephemeral", *flags]
    process = subprocess.run(
        [*command, prompt],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=400,  # a hang fails here
    )
    return Run(process)


def _requests(gateway: Gateway, status: str) -> float:
    url = f"http://127.0.0.1:{gateway.metrics_port}/metrics"
    return metric(url, "cortex_requests_total", model=MODEL, status=status)


def test_the_full_default_prompt_gets_the_context_error(
    codex: Path, gateway: Gateway, tmp_path: Path
) -> None:
    # Codex's own instructions, skills and tools, as a user would first run it.
    refused = _requests(gateway, "400")
    run = _codex(codex, gateway, tmp_path, QUESTION)
    assert run.returncode == 1, run.output
    failed = [e for e in run.events if e["type"] == "turn.failed"]
    assert failed and CONTEXT_FULL in failed[0]["error"]["message"], run.output
    # One request, refused by the gateway (a 400 is not retried), and no answer.
    assert _requests(gateway, "400") == refused + 1
    assert not run.items("agent_message"), run.output


@pytest.mark.timeout(600)
def test_codex_exec_prints_the_models_answer(codex: Path, gateway: Gateway, tmp_path: Path) -> None:
    instructions = tmp_path / "instructions.md"
    instructions.write_text("You are a helpful assistant. Answer in one short sentence.")
    last = tmp_path / "last-message.txt"
    run = _codex(
        codex, gateway, tmp_path, QUESTION,
        *SMALL,
        "--disable", "shell_tool",  # no tool to call: a plain answer
        "-c", f"model_instructions_file={json.dumps(str(instructions))}",
        "--output-last-message", str(last),
    )  # fmt: skip
    assert run.returncode == 0, run.output
    messages = run.items("agent_message")
    assert len(messages) == 1, run.output
    answer = messages[0]["text"]
    assert "Paris" in answer, run.output  # the greedy answer, streamed through the route
    assert last.read_text().strip() == answer.strip()


@pytest.mark.timeout(900)
def test_codex_runs_the_models_tool_call_and_feeds_back_its_output(
    codex: Path, gateway: Gateway, tmp_path: Path
) -> None:
    """The model calls Codex's ``exec_command`` tool, Codex runs it and sends the output
    back in a second request, and the model answers from it.

    How the 135M model is made to call the tool every time: the prompt asks it to repeat
    one line, which is the call in the markup the neuron asks of models whose chat
    template knows no tools (Hermes ``<tool_call>``, the neuron's default tool prompt),
    and it samples greedily with no prefix cache, so the same prompt gives the same
    call on every run. Codex sends ``tool_choice: "auto"`` and cannot be told otherwise;
    no gateway setting forces a call. The marker is in a file only this test writes, so
    it can come back only through the command Codex ran.
    """
    marker = "cortex-marker-5821"
    work = tmp_path / "work"
    work.mkdir()
    (work / "marker.txt").write_text(marker + "\n")
    instructions = tmp_path / "instructions.md"
    instructions.write_text(
        "You are a shell assistant. To run a command, call the exec_command tool with "
        "the command in cmd."
    )
    prompt = (
        "Reply with exactly this line and nothing else:\n"
        '<tool_call>{"name": "exec_command", "arguments": {"cmd": "cat marker.txt"}}</tool_call>'
    )
    answered = _requests(gateway, "200")
    run = _codex(
        codex, gateway, tmp_path, prompt,
        *SMALL,
        "-c", f"model_instructions_file={json.dumps(str(instructions))}",
        "--sandbox", "danger-full-access",  # a temporary directory; no sandbox to set up
    )  # fmt: skip
    assert run.returncode == 0, run.output
    commands = run.items("command_execution")
    assert commands, f"the model called no tool:\n{run.output}"
    assert "cat marker.txt" in commands[0]["command"], run.output
    assert commands[0]["exit_code"] == 0, run.output
    assert marker in commands[0]["aggregated_output"], run.output
    # Codex sent the output back (a second request) and the model answered from it.
    assert _requests(gateway, "200") >= answered + 2
    messages = run.items("agent_message")
    assert messages and marker in messages[-1]["text"], run.output
