"""Rich tables for ``cortex status`` and ``cortex models``.

Pure rendering: the inputs are the gateway's JSON answers as plain dicts, the only
output is what is printed on the given console. Every key but the names is treated
as optional, so an older or newer gateway (or a node that is down and reports
nothing) still renders instead of raising a KeyError at the operator.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

_STATE_STYLE = {
    "ready": "green",
    "loading": "yellow",
    "recovering": "yellow",
    "poisoned": "red",
    "unloading": "magenta",
}


def render_fleet(fleet: dict[str, Any], console: Console, *, now: float | None = None) -> None:
    """Print the ``GET /fleet`` answer: a table of nodes, then the model catalogue."""
    now = time.time() if now is None else now
    nodes = fleet.get("nodes") or []
    models = fleet.get("models") or []

    table = Table(title="Nodes", title_justify="left")
    for column in ("node", "endpoint", "status", "devices", "models"):
        table.add_column(column)
    for node in nodes:
        table.add_row(
            Text(str(node.get("name", "?")), style="bold"),
            Text(str(node.get("endpoint", ""))),
            _node_status(node, now),
            _lines(_device_line(d) for d in node.get("devices") or []),
            _lines(_model_line(m) for m in node.get("models") or []),
        )
    if nodes:
        console.print(table)
    else:
        console.print(Text("No nodes configured.", style="dim"))

    catalogue = Table(title="Models", title_justify="left")
    for column in ("model", "source", "pinned", "priority", "estimate", "loaded on", "aliases"):
        catalogue.add_column(column)
    for model in models:
        estimate = model.get("memory_estimate_mb")
        catalogue.add_row(
            Text(str(model.get("id", "?")), style="bold"),
            Text(str(model.get("source") or "")),
            Text("yes", style="cyan") if model.get("pinned") else _none(),
            Text(str(model["priority"])) if model.get("priority") is not None else _none(),
            Text(f"{estimate} MB") if isinstance(estimate, int | float) else _none(),
            _joined(model.get("loaded_on")),
            _joined(model.get("aliases")),
        )
    if models:
        console.print(catalogue)
    else:
        console.print(Text("No models in the catalogue.", style="dim"))
    eviction = fleet.get("eviction")
    if isinstance(eviction, dict):
        console.print(
            Text(
                f"eviction: {eviction.get('strategy', '?')}, "
                f"{eviction.get('cycles', 0)} cycles, idle unload after "
                f"{eviction.get('idle_unload_after_s') or 'never'}"
                f"{'s' if eviction.get('idle_unload_after_s') else ''}",
                style="dim",
            )
        )


def render_models(models: dict[str, Any], console: Console) -> None:
    """Print an OpenAI ``/v1/models`` list, with cortex's extra ``loaded_on`` and ``aliases``."""
    entries = models.get("data") or []
    if not entries:
        console.print(Text("No models.", style="dim"))
        return
    # Only show aliases when some model has them, to keep the common table narrow.
    with_aliases = any(entry.get("aliases") for entry in entries)
    table = Table(title="Models", title_justify="left")
    for column in ("model", "owned by", "loaded on"):
        table.add_column(column)
    if with_aliases:
        table.add_column("aliases")
    for entry in entries:
        row = [
            Text(str(entry.get("id", "?")), style="bold"),
            Text(str(entry.get("owned_by", ""))),
            _joined(entry.get("loaded_on")),
        ]
        if with_aliases:
            row.append(_joined(entry.get("aliases")))
        table.add_row(*row)
    console.print(table)


def _node_status(node: dict[str, Any], now: float) -> Text:
    if node.get("up"):
        return Text("up", style="bold green")
    status = Text("down", style="bold red")
    if node.get("error"):
        status.append(f"\n{node['error']}", style="red")
    last_seen = node.get("last_seen")
    if isinstance(last_seen, int | float):
        status.append(f"\nlast seen {_ago(now - last_seen)}", style="dim")
    return status


def _device_line(device: dict[str, Any]) -> Text:
    name = str(device.get("name") or device.get("id") or "?")
    total, free = device.get("memory_total_mb"), device.get("memory_free_mb")
    line = Text(f"{name} ")
    if isinstance(total, int | float) and isinstance(free, int | float):
        line.append(f"{round(total - free)}/{round(total)} MB")
    elif isinstance(total, int | float):
        line.append(f"?/{round(total)} MB")
    else:
        line.append("memory unknown", style="dim")
    budget = device.get("memory_budget_mb")
    if isinstance(budget, int | float):
        line.append(f", budget {round(budget)} MB", style="cyan")
    return line


def _model_line(model: dict[str, Any]) -> Text:
    state = str(model.get("state", "?"))
    line = Text(f"{model.get('id', '?')} (")
    line.append(state, style=_STATE_STYLE.get(state, ""))
    line.append(f", {model.get('in_flight', 0)}/{model.get('queued', 0)}")
    memory = model.get("memory_mb")
    if isinstance(memory, int | float) and memory:
        line.append(f", {round(memory)} MB")
    line.append(")")
    return line


def _none() -> Text:
    # A fresh Text each time: Text is mutable and cells must not share one.
    return Text("-", style="dim")


def _lines(items: Iterable[Text]) -> Text:
    joined = Text("\n").join(items)
    return joined if joined.plain else _none()


def _joined(values: list[Any] | None) -> Text:
    return Text(", ".join(str(v) for v in values)) if values else _none()


def _ago(seconds: float) -> str:
    if seconds < 0:
        return "just now"
    if seconds < 120:
        return f"{int(seconds)}s ago"
    if seconds < 7200:
        return f"{int(seconds // 60)}m ago"
    return f"{int(seconds // 3600)}h ago"
