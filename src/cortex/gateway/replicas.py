"""How many copies of each model the fleet runs: pure decisions over a snapshot.

A model's profile says ``min_replicas`` (copies kept warm, default 1) and
``max_replicas`` (default 1: one copy, as before replicas existed). Between the two:

- **up**: its queue stayed deep (more requests waiting than one copy's ``max_batch``)
  for ``scale_up_after_s``; or fewer than ``min_replicas`` copies are up (a node was
  lost, or the gateway just started: ``min_replicas`` > 1 keeps its copies warm, as
  ``pinned`` keeps one);
- **down**: a copy beyond ``min_replicas`` had no request for ``scale_down_after_s``;
  the idlest goes, one per round, so a dip in traffic does not drop several at once.

Nothing here does I/O or reads a clock: the scheduler gathers ``ModelLoad`` per model,
asks ``decide``, and carries the answer out (placement picks the node for a new copy,
as for a cold load, away from the nodes that already hold one). Every decision carries
its reason, for the log line and ``/fleet``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Copy:
    node: str
    idle_s: float  # since its last request ended (0 while busy)
    busy: bool = False


@dataclass(frozen=True)
class ModelLoad:
    """One model as replica decisions see it."""

    model_id: str
    min_replicas: int
    max_replicas: int
    max_batch: int
    scale_up_after_s: float
    scale_down_after_s: float
    copies: tuple[Copy, ...]  # ready copies
    loading: int = 0  # copies being loaded now
    waiting: int = 0  # requests waiting for a place, over all copies
    deep_for_s: float = 0.0  # how long ``waiting`` has stayed above one copy's max_batch


@dataclass(frozen=True)
class AddCopy:
    model_id: str
    reason: str
    avoid_nodes: frozenset[str]  # nodes that hold a copy already: spread copies


@dataclass(frozen=True)
class RetireCopy:
    model_id: str
    node: str
    reason: str


Decision = AddCopy | RetireCopy


def queue_is_deep(waiting: int, max_batch: int) -> bool:
    """More waiting than one copy's batch takes: the trigger whose duration counts."""
    return waiting > max_batch


def decide(models: Iterable[ModelLoad]) -> list[Decision]:
    """What to change now, at most one step per model per round."""
    decisions: list[Decision] = []
    for model in models:
        decision = _decide_one(model)
        if decision is not None:
            decisions.append(decision)
    return decisions


def _decide_one(model: ModelLoad) -> Decision | None:
    floor = max(1, model.min_replicas)
    ceiling = max(floor, model.max_replicas)
    present = len(model.copies) + model.loading
    holding = frozenset(copy.node for copy in model.copies)
    if present == 0 and floor == 1:
        return None  # not loaded: a request's cold load brings the first copy
    if present < floor:  # min_replicas > 1 keeps its copies warm, requests or not
        return AddCopy(
            model.model_id,
            f"min_replicas={floor}, {present} up or loading",
            holding,
        )
    deep = queue_is_deep(model.waiting, model.max_batch)
    if (
        present < ceiling
        and model.loading == 0  # one copy at a time: see what the last one did first
        and deep
        and model.deep_for_s >= model.scale_up_after_s
    ):
        return AddCopy(
            model.model_id,
            f"{model.waiting} waiting (> max_batch {model.max_batch}) for "
            f"{model.deep_for_s:.0f} s; copy {present + 1} of at most {ceiling}",
            holding,
        )
    if len(model.copies) > floor and not deep and model.loading == 0:
        idle = [c for c in model.copies if not c.busy and c.idle_s >= model.scale_down_after_s]
        if idle:
            idlest = max(idle, key=lambda copy: copy.idle_s)
            return RetireCopy(
                model.model_id,
                idlest.node,
                f"idle {idlest.idle_s:.0f} s (>= {model.scale_down_after_s:.0f} s); "
                f"{len(model.copies) - 1} copies left, min_replicas={floor}",
            )
    return None
