"""Rich views for ``cortex status`` (once or ``--watch``) and ``cortex models``.

Pure rendering: the inputs are the gateway's answers parsed into their wire types
(``protocol.fleet``), the only output is a renderable (or what is printed on the given
console). Parsing happens before (``cli.main``): here every field is there.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from cortex.protocol.fleet import (
    FleetModel,
    FleetView,
    ModelListing,
    NodeModel,
    NodeView,
)
from cortex.protocol.neuron import DeviceStatus

_STATE_STYLE = {
    "ready": "green",
    "loading": "yellow",
    "recovering": "yellow",
    "poisoned": "red",
    "unloading": "magenta",
}
BAR_WIDTH = 20


def render_fleet(fleet: FleetView, console: Console, *, now: float | None = None) -> None:
    """Print the ``GET /fleet`` answer: a summary, the nodes, then the catalogue."""
    console.print(fleet_view(fleet, now=now))


def fleet_view(fleet: FleetView, *, now: float | None = None) -> RenderableType:
    """The ``GET /fleet`` answer as one renderable (what ``render_fleet`` prints)."""
    now = time.time() if now is None else now
    parts: list[RenderableType] = [_summary(fleet)]

    if fleet.nodes:
        parts.append(Text("Nodes", style="italic"))
        parts.extend(_node_view(node, now) for node in fleet.nodes)
    else:
        parts.append(Text("No nodes configured.", style="dim"))

    if fleet.models:
        parts.append(_Catalogue(fleet.models, now))
    else:
        parts.append(Text("No models in the catalogue.", style="dim"))
    eviction = fleet.eviction
    idle = f"{eviction.idle_unload_after_s:g}s" if eviction.idle_unload_after_s else "never"
    parts.append(
        Text(
            f"eviction: {eviction.strategy}, {eviction.cycles} cycles, idle unload after {idle}",
            style="dim",
        )
    )
    return Group(*parts)


def watch_view(
    fleet: FleetView | None,
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

    def __init__(self, models: list[FleetModel], now: float) -> None:
        self.models = models
        self.now = now

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
            estimate = model.memory_estimate_mb
            row = [
                Text(model.id, style="bold"),
                Text(str(model.requests_last_min)),
                _joined(model.loaded_on),
                Text("yes", style="cyan") if model.pinned else _none(),
                Text(str(model.priority)) if model.priority is not None else _none(),
                Text(f"{estimate} MB") if estimate is not None else _none(),
            ]
            source, aliases = model.source or "", _joined(model.aliases)
            if wide:
                table.add_row(*row, Text(source), aliases)
                continue
            table.add_row(*row)
            if source or model.aliases:
                described = Text(source)
                if model.aliases:
                    described.append(f"{'  ' if source else ''}aliases: ", style="dim")
                    described.append_text(aliases)
                details.add_row(Text(f"  {model.id}", style="dim"), described)
        yield table
        if not wide and details.row_count:
            yield details
        scaled = [m for m in self.models if m.replicas and m.replicas.max_replicas > 1]
        if scaled:
            yield _replicas(scaled, self.now)


def _replicas(models: list[FleetModel], now: float) -> RenderableType:
    """Per model that may run several copies: where they are, and the last decision why."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for model in models:
        replicas = model.replicas
        assert replicas is not None
        line = Text(f"{len(replicas.copies)} of {replicas.min_replicas}-{replicas.max_replicas}")
        if replicas.copies:
            line.append(f" ({', '.join(replicas.copies)})")
        last = replicas.last_decision
        if last is not None:
            where = f" on {last.node}" if last.node else ""
            line.append(f"  last: {last.action}{where} {_ago(now - last.at)}: ", style="dim")
            line.append(last.reason, style="dim")
            if last.error:
                line.append(f" (failed: {last.error})", style="red")
        grid.add_row(Text(f"  {model.id}", style="bold"), line)
    return Group(Text("Copies", style="italic"), grid)


def render_models(models: ModelListing, console: Console) -> None:
    """Print the ``/v1/models`` list, with cortex's extra ``loaded_on``, ``aliases`` and
    ``sampling_defaults``."""
    if not models.data:
        console.print(Text("No models.", style="dim"))
        return
    # Only show aliases (sampling defaults) when some model has them, to keep the common
    # table narrow.
    with_aliases = any(entry.aliases for entry in models.data)
    with_sampling = any(entry.sampling_defaults for entry in models.data)
    table = Table(title="Models", title_justify="left")
    for column in ("model", "owned by", "loaded on"):
        table.add_column(column)
    if with_aliases:
        table.add_column("aliases")
    if with_sampling:
        table.add_column("sampling defaults")
    for entry in models.data:
        row = [Text(entry.id, style="bold"), Text(entry.owned_by), _joined(entry.loaded_on)]
        if with_aliases:
            row.append(_joined(entry.aliases))
        if with_sampling:
            defaults = entry.sampling_defaults
            given = defaults.model_dump(exclude_none=True) if defaults else {}
            row.append(_joined(f"{name}={value}" for name, value in given.items()))
        table.add_row(*row)
    console.print(table)


def _summary(fleet: FleetView) -> Text:
    nodes = fleet.nodes
    up = sum(1 for node in nodes if node.up and node.compatible)
    down = sum(1 for node in nodes if not node.up)
    line = Text(f"{len(nodes)} node{'' if len(nodes) == 1 else 's'}: ")
    line.append(f"{up} up", style="green" if up else "")
    line.append(", ")
    line.append(f"{down} down", style="red" if down else "")
    if incompatible := len(nodes) - up - down:
        line.append(", ")
        line.append(f"{incompatible} incompatible", style="red")
    rate = fleet.requests_last_min
    line.append(f"; {rate} request{'' if rate == 1 else 's'} in the last minute")
    return line


def _node_status(node: NodeView) -> Text:
    if not node.up:
        return Text("down", style="bold red")
    if not node.compatible:
        return Text("incompatible", style="bold red")
    return Text("up", style="bold green")


def _node_view(node: NodeView, now: float) -> RenderableType:
    """A node's line (name, up or down, endpoint), then its devices and its models."""
    line = Text(node.name, style="bold")
    line.append("  ")
    line.append_text(_node_status(node))
    line.append(f"  {node.endpoint}", style="dim")
    if node.restarts:
        line.append(f"  restarted {node.restarts}x", style="yellow")
    parts: list[RenderableType] = [line]
    why = Text()
    if node.error:  # why it is down or incompatible, or what its last poll answered
        why.append(node.error, style="red")
    if not node.up and node.last_seen is not None:
        why.append(f"{'; ' if why else ''}last seen {_ago(now - node.last_seen)}", style="dim")
    if why:
        parts.append(Padding(why, (0, 0, 0, 2)))
    if node.devices:
        parts.append(Padding(_devices_grid(node.devices), (0, 0, 0, 2)))
    if node.models:
        parts.append(Padding(_models_grid(node.models), (0, 0, 0, 2)))
    elif node.up and node.compatible:
        parts.append(Text("  no models loaded", style="dim"))
    return Group(*parts)


def _devices_grid(devices: list[DeviceStatus]) -> Table:
    """Per device: a bar of its memory in use and, when the node has a budget, one of
    the models' share of it."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(style="dim")
    for device in devices:
        name = Text(device.name or device.id)
        total, free = device.memory_total_mb, device.memory_free_mb
        if total > 0:
            grid.add_row(name, "memory", _bar(total - free, total), f"{total - free}/{total} MB")
        else:
            grid.add_row(name, "memory", Text("unknown", style="dim"))
        used, budget = device.memory_used_by_models_mb, device.memory_budget_mb
        if budget:
            numbers = Text(f"{used}/{budget} MB", style="cyan")
            grid.add_row("", "budget", _bar(used, budget), numbers, "used by models")
        elif used:
            grid.add_row("", "models", "", Text(f"{used} MB", style="cyan"))
        engines = device.engines
        if device.id != "cpu" and engines:  # a GPU: say what each engine can do on it
            unusable = engines.get("gguf") not in (None, "cuda")
            line = Text(f"gguf: {engines.get('gguf', '?')}, dense: {engines.get('dense', '?')}")
            if unusable:
                line.stylize("yellow")
                line.append("  (CORTEX_GPU=cuda scripts/setup.sh to use it)", style="dim")
            grid.add_row("", "engines", line)
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


def _models_grid(models: list[NodeModel]) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    for _ in range(3):
        grid.add_column(justify="right")
    for model in models:
        grid.add_row(
            Text(model.id),
            Text(model.state, style=_STATE_STYLE.get(model.state, "")),
            Text(f"{model.in_flight} in flight"),
            Text(f"{model.queued} queued"),
            Text(f"{model.memory_mb} MB") if model.memory_mb else Text(""),
        )
    return grid


def _none() -> Text:
    # A fresh Text each time: Text is mutable and cells must not share one.
    return Text("-", style="dim")


def _joined(values: Iterable[Any]) -> Text:
    joined = ", ".join(str(v) for v in values)
    return Text(joined) if joined else _none()


def _ago(seconds: float) -> str:
    if seconds < 0:
        return "just now"
    if seconds < 120:
        return f"{int(seconds)}s ago"
    if seconds < 7200:
        return f"{int(seconds // 60)}m ago"
    return f"{int(seconds // 3600)}h ago"
