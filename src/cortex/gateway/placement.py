"""Where a model goes, and what leaves to make room: pure functions over a fleet snapshot.

Nothing here does I/O or reads a clock; the scheduler builds the snapshot (``Room``
per device of every eligible node), asks, and carries the answer out. That keeps
every decision testable in microseconds and explainable in one log line.

Policies:
- ``lru``: the least recently used idle model leaves first.
- ``priority``: the lowest ``priority`` leaves first, least recently used among equals.
Pinned models and models with requests in flight never leave.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Strategy = Literal["lru", "priority"]


@dataclass(frozen=True)
class Resident:
    """A model loaded on a device, as eviction sees it."""

    model_id: str
    memory_mb: int
    last_used: float
    pinned: bool = False
    priority: int = 50
    busy: bool = False  # requests in flight or queued: never evicted, never moved
    movable: bool = True  # defrag may reload it elsewhere (it has a profile, no node lock)
    allowed_nodes: frozenset[str] = frozenset()  # empty: any node


@dataclass(frozen=True)
class Room:
    """One device of one node: what can be allocated now and who lives there."""

    node: str
    device: str
    free_mb: int
    residents: tuple[Resident, ...] = ()


@dataclass(frozen=True)
class LoadPlan:
    node: str
    device: str
    evict: tuple[str, ...] = ()


@dataclass(frozen=True)
class NoRoom:
    """Why a load fits nowhere. ``transient``: it would fit once busy models go idle."""

    need_mb: int
    largest_slot_mb: int
    largest_slot_node: str | None
    transient: bool


@dataclass(frozen=True)
class Move:
    model_id: str
    source: str
    target: str
    memory_mb: int


@dataclass(frozen=True)
class Idle:
    node: str
    model_id: str
    idle_s: float


@dataclass
class _Space:
    room: Room
    free_mb: int
    placed: list[str] = field(default_factory=list)


def eviction_order(residents: Iterable[Resident], strategy: Strategy) -> list[Resident]:
    """The residents that may be evicted, the first to go first."""
    evictable = [r for r in residents if not r.pinned and not r.busy]
    return sorted(evictable, key=lambda r: _value(r, strategy))


def plan_load(rooms: Sequence[Room], need_mb: int, strategy: Strategy) -> LoadPlan | NoRoom:
    """Pick a device for a model of ``need_mb``: a free fit first, else the cheapest eviction.

    A free fit takes the tightest device (best fit), leaving big gaps for big models.
    When every device needs eviction, the chosen one is where the most valuable model
    thrown out is least valuable, then where fewest models leave.
    """
    fits = [room for room in rooms if room.free_mb >= need_mb]
    if fits:
        best = min(fits, key=lambda room: (room.free_mb - need_mb, room.node, room.device))
        return LoadPlan(best.node, best.device)

    options: list[tuple[tuple, LoadPlan]] = []
    for room in rooms:
        victims = _victims(room, need_mb, strategy)
        if victims is not None:
            cost = (_value(victims[-1], strategy), len(victims), room.node, room.device)
            plan = LoadPlan(room.node, room.device, tuple(v.model_id for v in victims))
            options.append((cost, plan))
    if options:
        return min(options, key=lambda option: option[0])[1]
    return _no_room(rooms, need_mb)


def idle_models(
    rooms: Iterable[Room],
    now: float,
    idle_after_s: float,
    keep_alive: Mapping[str, float] | None = None,
) -> list[Idle]:
    """Models idle for at least ``idle_after_s`` (0: never) that may be unloaded on time
    alone; ``keep_alive`` replaces that time for the models it names (an Ollama client's
    ``keep_alive``: 0 unloads once idle at all, ``inf`` never)."""
    found = []
    for room in rooms:
        for resident in room.residents:
            after = (keep_alive or {}).get(resident.model_id, idle_after_s or math.inf)
            idle_s = now - resident.last_used
            if not resident.pinned and not resident.busy and idle_s >= after:
                found.append(Idle(room.node, resident.model_id, idle_s))
    return found


def plan_defrag(rooms: Sequence[Room]) -> list[Move]:
    """Moves that empty one device so the fleet's largest free slot grows, or none.

    Evictions leave free memory scattered in pieces across nodes, none big enough for
    the next large model, so it would evict again although the fleet has room. Defrag
    picks the device whose idle, movable models all fit elsewhere without evicting
    anything (largest first, each into the tightest gap) and whose emptying yields the
    biggest slot. Moves are reloads elsewhere, done load-first so nothing stops serving.
    """
    if len(rooms) < 2:
        return []
    largest_now = max(room.free_mb for room in rooms)
    best: tuple[int, list[Move]] | None = None
    for source in rooms:
        if not source.residents or any(not _can_move(r) for r in source.residents):
            continue
        moves = _rehome(source, [room for room in rooms if room is not source])
        if moves is None:
            continue
        slot = source.free_mb + sum(move.memory_mb for move in moves)
        if slot > largest_now and (best is None or slot > best[0]):
            best = (slot, moves)
    return best[1] if best else []


def _value(resident: Resident, strategy: Strategy) -> tuple:
    if strategy == "priority":
        return (resident.priority, resident.last_used, resident.model_id)
    return (resident.last_used, resident.model_id)


def _victims(room: Room, need_mb: int, strategy: Strategy) -> list[Resident] | None:
    free, chosen = room.free_mb, []
    for resident in eviction_order(room.residents, strategy):
        chosen.append(resident)
        free += resident.memory_mb
        if free >= need_mb:
            return chosen
    return None


def _no_room(rooms: Sequence[Room], need_mb: int) -> NoRoom:
    slots = [
        (room.free_mb + sum(r.memory_mb for r in eviction_order(room.residents, "lru")), room)
        for room in rooms
    ]
    waiting = [
        room.free_mb + sum(r.memory_mb for r in room.residents if not r.pinned) for room in rooms
    ]
    largest, room = max(slots, key=lambda slot: slot[0], default=(0, None))
    return NoRoom(
        need_mb=need_mb,
        largest_slot_mb=largest,
        largest_slot_node=room.node if room else None,
        transient=any(slot >= need_mb for slot in waiting),
    )


def _can_move(resident: Resident) -> bool:
    return resident.movable and not resident.pinned and not resident.busy


def _rehome(source: Room, others: list[Room]) -> list[Move] | None:
    spaces = [_Space(room, room.free_mb) for room in others]
    moves = []
    for resident in sorted(source.residents, key=lambda r: -r.memory_mb):
        allowed = [
            space
            for space in spaces
            if space.free_mb >= resident.memory_mb
            and resident.model_id not in space.placed
            and all(r.model_id != resident.model_id for r in space.room.residents)
            and (not resident.allowed_nodes or space.room.node in resident.allowed_nodes)
        ]
        if not allowed:
            return None
        target = min(allowed, key=lambda space: space.free_mb - resident.memory_mb)
        target.free_mb -= resident.memory_mb
        target.placed.append(resident.model_id)
        moves.append(Move(resident.model_id, source.node, target.room.node, resident.memory_mb))
    return moves
