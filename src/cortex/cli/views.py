"""Rich views for ``cortex status`` (once or ``--watch``) and ``cortex models``.

Pure rendering: the inputs are the gateway's JSON answers as plain dicts, the only
output is a renderable (or what is printed on the given console). Every key but the
names is treated as optional, so an older or newer gateway (or a node that is down and
reports nothing) still renders instead of raising a KeyError at the operator.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

_STATE_STYLE = {
    "ready": "green",
    "loading": "yellow",
    "recovering": "yellow",
    "poisoned": "red",
    "unloading": "magenta",
}
BAR_WIDTH = 20


def render_fleet(fleet: dict[str, Any], console: Console, *, now: float | None = None) -> None:
    """Print the ``GET /fleet`` answer: a summary, the nodes, then the catalogue."""
    console.print(fleet_view(fleet, now=now))


def fleet_view(fleet: dict[str, Any], *, now: float | None = None) -> RenderableType:
    """The ``GET /fleet`` answer as one renderable (what ``render_fleet`` prints)."""
    now = time.time() if now is None else now
    nodes = fleet.get("nodes") or []
    models = fleet.get("models") or []
    parts: list[RenderableType] = [_summary(fleet, nodes)]

    if nodes:
        parts.append(Text("Nodes", style="italic"))
        parts.extend(_node_view(node, now) for node in nodes)
    else:
        parts.append(Text("No nodes configured.", style="dim"))

    parts.append(_Catalogue(models) if models else Text("No models in the catalogue.", style="dim"))
    eviction = fleet.get("eviction")
    if isinstance(eviction, dict):
        parts.append(
            Text(
                f"eviction: {eviction.get('strategy', '?')}, "
                f"{eviction.get('cycles', 0)} cycles, idle unload after "
                f"{eviction.get('idle_unload_after_s') or 'never'}"
                f"{'s' if eviction.get('idle_unload_after_s') else ''}",
                style="dim",
            )
        )
    return Group(*parts)


def watch_view(
    fleet: dict[str, Any] | None,
    *,
    gateway: str,
    interval_s: float,
    updated_at: float | None,
    error: str | None = None,
    now: float | None = None,
) -> RenderableType:
    """One frame of ``cortex status --watch``: the last fleet answered (if any), under a
    line saying when it was fetched or, while the gateway does not answer, why not."""
    now = time.time() if now is None else now
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    header = Text(f"{gateway}", style="bold")
    if error is None:
        header.append(f"  updated {clock}", style="dim")
    else:
        header.append("  unreachable", style="bold red")
        header.append(f": {error}\n", style="red")
        header.append(f"retrying every {interval_s:g}s", style="dim")
        if updated_at is not None:
            header.append(
                f"; last answer {_ago(now - updated_at)}, shown below as it was", style="dim"
            )
    header.append(f"\nrefreshing every {interval_s:g}s, Ctrl-C to quit", style="dim")
    if fleet is None:
        return header
    return Group(header, fleet_view(fleet, now=now))


class _Catalogue:
    """The catalogue table: sources and aliases in columns of their own where the
    terminal is wide enough, else in a list below it, so ids and numbers stay whole."""

    WIDE = 140

    def __init__(self, models: list[dict[str, Any]]) -> None:
        self.models = models

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        wide = options.max_width >= self.WIDE
        table = Table(title="Models", title_justify="left")
        table.add_column("model", no_wrap=True)
        table.add_column("req/min", justify="right", no_wrap=True)
        for column in ("loaded on", "pinned", "priority", "estimate"):
            table.add_column(column)
        if wide:
            table.add_column("source")
            table.add_column("aliases")
        details = Table.grid(padding=(0, 1))
        details.add_column(no_wrap=True)
        details.add_column(overflow="fold")
        for model in self.models:
            estimate = model.get("memory_estimate_mb")
            rate = model.get("requests_last_min")
            row = [
                Text(str(model.get("id", "?")), style="bold"),
                Text(str(rate)) if _number(rate) else _none(),
                _joined(model.get("loaded_on")),
                Text("yes", style="cyan") if model.get("pinned") else _none(),
                Text(str(model["priority"])) if model.get("priority") is not None else _none(),
                Text(f"{estimate} MB") if _number(estimate) else _none(),
            ]
            source, aliases = str(model.get("source") or ""), _joined(model.get("aliases"))
            if wide:
                table.add_row(*row, Text(source), aliases)
                continue
            table.add_row(*row)
            if source or model.get("aliases"):
                described = Text(source)
                if model.get("aliases"):
                    described.append(f"{'  ' if source else ''}aliases: ", style="dim")
                    described.append_text(aliases)
                details.add_row(Text(f"  {model.get('id', '?')}", style="dim"), described)
        yield table
        if not wide and details.row_count:
            yield details


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


def _summary(fleet: dict[str, Any], nodes: list[dict[str, Any]]) -> Text:
    up = sum(1 for node in nodes if node.get("up"))
    line = Text(f"{len(nodes)} node{'' if len(nodes) == 1 else 's'}: ")
    line.append(f"{up} up", style="green" if up else "")
    line.append(", ")
    line.append(f"{len(nodes) - up} down", style="red" if len(nodes) > up else "")
    rate = fleet.get("requests_last_min")
    if _number(rate):
        line.append(f"; {rate} request{'' if rate == 1 else 's'} in the last minute")
    return line


def _node_view(node: dict[str, Any], now: float) -> RenderableType:
    """A node's line (name, up or down, endpoint), then its devices and its models."""
    line = Text(str(node.get("name", "?")), style="bold")
    line.append("  ")
    line.append_text(
        Text("up", style="bold green") if node.get("up") else Text("down", style="bold red")
    )
    if node.get("endpoint"):
        line.append(f"  {node['endpoint']}", style="dim")
    parts: list[RenderableType] = [line]
    if not node.get("up"):
        why = Text()
        if node.get("error"):
            why.append(str(node["error"]), style="red")
        last_seen = node.get("last_seen")
        if _number(last_seen):
            why.append(f"{'; ' if why else ''}last seen {_ago(now - last_seen)}", style="dim")
        if why:
            parts.append(Padding(why, (0, 0, 0, 2)))
    devices = node.get("devices") or []
    if devices:
        parts.append(Padding(_devices_grid(devices, node), (0, 0, 0, 2)))
    models = node.get("models") or []
    if models:
        parts.append(Padding(_models_grid(models), (0, 0, 0, 2)))
    elif node.get("up"):
        parts.append(Text("  no models loaded", style="dim"))
    return Group(*parts)


def _devices_grid(devices: list[dict[str, Any]], node: dict[str, Any]) -> Table:
    """Per device: a bar of its memory in use and, when the node has a budget, one of
    the models' share of it."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(style="dim")
    for device in devices:
        name = Text(str(device.get("name") or device.get("id") or "?"))
        total, free = device.get("memory_total_mb"), device.get("memory_free_mb")
        if _number(total) and _number(free) and total > 0:
            grid.add_row(
                name,
                "memory",
                _bar(total - free, total),
                f"{round(total - free)}/{round(total)} MB",
            )
        elif _number(total):
            grid.add_row(name, "memory", _none(), f"?/{round(total)} MB")
        else:
            grid.add_row(name, "memory", Text("unknown", style="dim"))
        used = device.get("memory_used_by_models_mb")
        if not _number(used):
            # an older neuron: add up what its models on this device hold
            held = [
                m.get("memory_mb")
                for m in node.get("models") or []
                if device.get("id") in (m.get("devices") or [])
            ]
            used = sum(mb for mb in held if _number(mb)) if held else None
        budget = device.get("memory_budget_mb")
        if _number(budget) and budget > 0:
            numbers = Text(f"{round(used or 0)}/{round(budget)} MB", style="cyan")
            grid.add_row("", "budget", _bar(used or 0, budget), numbers, "used by models")
        elif _number(used) and used:
            grid.add_row("", "models", "", Text(f"{round(used)} MB", style="cyan"))
    return grid


def _bar(used: float, total: float) -> Text:
    fraction = min(1.0, max(0.0, used / total))
    filled = round(fraction * BAR_WIDTH)
    if used > 0 and filled == 0:
        filled = 1  # something is there: show it
    style = "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"
    bar = Text("█" * filled, style=style)
    bar.append("░" * (BAR_WIDTH - filled), style="dim")
    return bar


def _models_grid(models: list[dict[str, Any]]) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    for _ in range(3):
        grid.add_column(justify="right")
    for model in models:
        state = str(model.get("state", "?"))
        memory = model.get("memory_mb")
        grid.add_row(
            Text(str(model.get("id", "?"))),
            Text(state, style=_STATE_STYLE.get(state, "")),
            Text(f"{model.get('in_flight') or 0} in flight"),
            Text(f"{model.get('queued') or 0} queued"),
            Text(f"{round(memory)} MB") if _number(memory) and memory else Text(""),
        )
    return grid


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
