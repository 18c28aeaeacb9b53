"""Shared fixtures: one real neuron and one real gateway per test session."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Gateways started by the tests keep their databases out of the user's state dir.
os.environ.setdefault("CORTEX_STATE_DIR", tempfile.mkdtemp(prefix="cortex-test-state-"))

from procs import BATCH_STABLE, BUNDLED, MODEL, Gateway, Neuron, toml_table


@pytest.fixture(scope="session")
def neuron(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Neuron]:
    """A neuron serving the bundled model (context 4096, up to 4 sequences batched).
    Batch-stable: many tests compare greedy answers of which one hit the prefix cache."""
    process = Neuron(
        tmp_path_factory.mktemp("neuron"), "n1", [f"{MODEL}={BUNDLED}"], spec_fields=BATCH_STABLE
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def gateway(neuron: Neuron, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway in front of ``neuron``, with Claude Code's model names (it asks for
    ``claude-opus-*`` by default, ``claude-haiku-*`` for small tasks) as aliases."""
    config = f"""
[gateway]
poll_interval_s = 0.5

[[neurons]]
name = "{neuron.name}"
endpoint = "{neuron.url}"
"""
    aliases = ["claude-haiku-*", "claude-sonnet-*", "claude-opus-*", "small"]
    models = toml_table(
        "models", {"id": MODEL, "source": BUNDLED, "aliases": aliases, **BATCH_STABLE}
    )
    process = Gateway(tmp_path_factory.mktemp("gateway"), config, models, {MODEL})
    yield process
    process.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the session; ``new_database(url)`` makes a
    fresh database in it per test."""
    from postgres import postgres_cluster

    with postgres_cluster() as url:
        yield url
