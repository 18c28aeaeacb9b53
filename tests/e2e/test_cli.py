"""`cortex status` and `cortex models` against a running gateway."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from procs import MODEL, Gateway

pytestmark = pytest.mark.slow


def cortex(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cortex.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_status_table_and_json(gateway: Gateway) -> None:
    table = cortex("status", "--gateway", gateway.url)
    assert "n1" in table and "up" in table and MODEL in table and "ready" in table
    fleet = json.loads(cortex("status", "--gateway", gateway.url, "--json"))
    assert fleet["nodes"][0]["name"] == "n1"


def test_models_table_and_json(gateway: Gateway) -> None:
    assert MODEL in cortex("models", "--gateway", gateway.url)
    listed = json.loads(cortex("models", "--gateway", gateway.url, "--json"))
    assert [m["id"] for m in listed["data"]] == [MODEL]


def test_unreachable_gateway_is_a_clear_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cortex.cli.main", "status", "--gateway", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "cannot reach the gateway" in done.stderr
