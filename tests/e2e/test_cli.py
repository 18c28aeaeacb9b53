"""`cortex status`, `models`, `load` and `unload` against a running gateway, and the
`/fleet/unload` route the last one drives."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from procs import BUNDLED, MODEL, Gateway, Neuron

pytestmark = pytest.mark.slow


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", **env},
    )


def cortex(*args: str, **env: str) -> str:
    done = run(*args, **env)
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


KEY = "sk-cli"
ADMIN = "cli-admin-token"
SPARE = f'[[models]]\nid = "spare"\nsource = "{BUNDLED}"\ncontext_length = 512\nmax_batch = 1\n'


@pytest.fixture(scope="module")
def keyed(neuron: Neuron, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with an API key over the session's neuron, with a second model to move."""
    config = f"""
[gateway]
api_keys = ["{KEY}"]
admin_token = "{ADMIN}"
poll_interval_s = 0.5

[[neurons]]
name = "{neuron.name}"
endpoint = "{neuron.url}"
"""
    models = f'[[models]]\nid = "{MODEL}"\nsource = "{BUNDLED}"\n\n' + SPARE
    process = Gateway(
        tmp_path_factory.mktemp("cli"), config, models, {MODEL}, api_key=KEY, admin_token=ADMIN
    )
    yield process
    process.stop()
    # whatever a failed test left: the session's neuron serves its one model only
    httpx.post(neuron.url + "/models/unload", json={"id": "spare"}, timeout=60)


def test_load_and_unload_commands(keyed: Gateway, neuron: Neuron) -> None:
    # load and unload are admin routes: the admin token; models is the API's: the key
    key = {"CORTEX_API_KEY": KEY, "CORTEX_ADMIN_TOKEN": ADMIN}
    assert neuron.model("spare") is None
    loaded = cortex("load", "spare", "--node", "n1", "--gateway", keyed.url, **key)
    assert loaded.strip() == "spare loaded on n1"
    assert neuron.model("spare")["state"] == "ready"
    listed = json.loads(cortex("models", "--gateway", keyed.url, "--json", **key))
    assert next(m for m in listed["data"] if m["id"] == "spare")["loaded_on"] == ["n1"]
    unloaded = cortex("unload", "spare", "--gateway", keyed.url, **key)
    assert unloaded.strip() == "spare unloaded from n1"
    assert neuron.model("spare") is None
    # failures: a non-zero exit and the gateway's reason, never a traceback
    for args, env, says in (
        (("unload", "spare"), key, "404"),  # not loaded anywhere
        (("load", "spare", "--node", "n9"), key, "Unknown node 'n9'"),
        (("load", "nothing-like-it"), key, "nothing-like-it"),
        (("load", "spare"), {}, "401"),  # no credential
        (("load", "spare"), {"CORTEX_ADMIN_TOKEN": KEY}, "admin token"),  # a key is not one
    ):
        done = run(*args, "--gateway", keyed.url, **env)
        assert done.returncode != 0 and says in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert neuron.model("spare") is None


def test_fleet_unload_on_one_node_or_all(keyed: Gateway, neuron: Neuron) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}

    def post(path: str, body: dict) -> httpx.Response:
        return httpx.post(keyed.url + path, json=body, headers=headers, timeout=120)

    assert post("/fleet/load", {"model": "spare", "node": "n1"}).status_code == 200
    assert neuron.model("spare")["state"] == "ready"
    answer = post("/fleet/unload", {"model": "spare", "node": "n1"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model": "spare", "nodes": ["n1"], "unloaded": True}
    assert neuron.model("spare") is None
    assert "spare" not in {m["id"] for m in neuron.status()["models"]}
    # without a node: from every node that has it
    assert post("/fleet/load", {"model": "spare"}).status_code == 200
    answer = post("/fleet/unload", {"model": "spare"})
    assert answer.json()["nodes"] == ["n1"] and neuron.model("spare") is None
    again = post("/fleet/unload", {"model": "spare"})
    assert again.status_code == 404, again.text
    unknown = post("/fleet/unload", {"model": "spare", "node": "n9"})
    assert unknown.status_code == 400 and "n9" in unknown.json()["error"]["message"]
    malformed = post("/fleet/unload", {"node": "n1"})
    assert malformed.status_code == 400
    # the session's model stayed where it was
    assert neuron.model(MODEL)["state"] == "ready"
