"""Claude Code itself, headless (``claude -p``), against a real gateway and neuron.

``scripts/claude-code.sh`` installs the pinned version into ``.cache/claude-code``
(``scripts/test`` runs it); where it is missing these tests skip and say why.
Claude Code runs offline: a temporary HOME (no user settings), no telemetry, no
updater; it asks for ``claude-opus-*``, which the test gateway aliases to the
bundled 135M model (context 4096). The gateway and neuron are this module's own:
Claude Code's long prompts leave the neuron's prefix cache in a state that the
session neuron's exact-answer tests should not depend on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import required
from procs import BUNDLED, MODEL, Gateway, Neuron, gateway_config

pytestmark = pytest.mark.slow

CLAUDE = Path(__file__).resolve().parents[2] / ".cache/claude-code/node_modules/.bin/claude"
QUESTION = "What is the capital of France?"
BRIEF = ["--tools", "", "--system-prompt", "You are brief."]
# What Claude Code prints when the model's answer outgrows CLAUDE_CODE_MAX_OUTPUT_TOKENS.
OUTPUT_LIMIT = "output token maximum"


def _run(
    gateway: Gateway, home: Path, *args: str, max_output_tokens: int | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": gateway.url,
        "ANTHROPIC_API_KEY": "dummy",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    if max_output_tokens is not None:
        env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(max_output_tokens)
    return subprocess.run(
        [str(CLAUDE), "-p", QUESTION, *args],
        cwd=home,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,  # a hang fails here
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    """A neuron and a gateway for Claude Code, which asks for claude-* model names."""
    tmp = tmp_path_factory.mktemp("claude-code")
    node = Neuron(tmp, "cc1", [f"{MODEL}={BUNDLED}"])
    models = f"""
[[models]]
id = "{MODEL}"
source = "{BUNDLED}"
aliases = ["claude-haiku-*", "claude-sonnet-*", "claude-opus-*"]
"""
    process = Gateway(tmp, gateway_config(node), models, {MODEL})
    yield process
    process.stop()
    node.stop()


@pytest.fixture(scope="module")
def claude_code() -> Path:
    if not CLAUDE.exists():
        if shutil.which("npm") is None or shutil.which("node") is None:
            required.missing("Claude Code cannot be installed here: node and npm are not on PATH")
        required.missing(
            "Claude Code is not installed: run scripts/claude-code.sh (scripts/test does)"
        )
    version = subprocess.run([str(CLAUDE), "--version"], capture_output=True, text=True)
    if version.returncode != 0:
        required.missing(f"{CLAUDE} does not run: {version.stderr.strip()[-300:]}")
    return CLAUDE


@pytest.mark.timeout(400)
def test_claude_p_prints_the_models_answer(
    claude_code: Path, gateway: Gateway, tmp_path: Path
) -> None:
    # The 135M model samples at temperature 1 (Claude Code sends none): about half its
    # answers end within 150 tokens and a third run on to the end of the context, where
    # Claude Code asks it to continue and gives up. So each run is capped at 150 tokens
    # (Claude Code then tries 3 continuations, ~15 s in all) and the question asked
    # again, up to 10 times; any failure but that cap fails the test at once.
    runs = []
    for _ in range(10):
        run = _run(gateway, tmp_path, *BRIEF, max_output_tokens=150)
        output = run.stdout + run.stderr
        runs.append(f"exit {run.returncode}: {output.strip()[:300]}")
        if run.returncode == 0:
            break
        assert OUTPUT_LIMIT in output, "\n".join(runs)
    assert run.returncode == 0, "no answer ended within the cap:\n" + "\n".join(runs)
    answer = run.stdout.strip()
    assert answer and "API Error" not in answer and "context length" not in answer


def test_the_full_default_prompt_gets_the_context_error(
    claude_code: Path, gateway: Gateway, tmp_path: Path
) -> None:
    # Claude Code's own system prompt and tools: ~50 KB of JSON, over 12k tokens.
    run = _run(gateway, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    # Claude Code prints "Prompt is too long · the provider said: <our message>".
    assert "maximum context length is 4096 tokens" in output, output
    said = re.search(r"the prompt is (\d+) tokens long", output)
    assert said and int(said.group(1)) > 4096, output
