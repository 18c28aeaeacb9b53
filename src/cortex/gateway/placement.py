"""Where a model goes, and what leaves to make room: pure functions over a fleet snapshot.

Nothing here does I/O or reads a clock; the scheduler builds the snapshot (``Room``
per device of every eligible node), asks, and carries the answer out. That keeps
every decision testable in microseconds and explainable in one log line.

Policies:
- ``lru``: the least recently used idle model leaves first.
- ``priority``: the lowest ``priority`` leaves first, least recently used among equals.
Pinned models and models with requests in flight never leave.

A model may span several devices of one node (``tensor_parallel = N``, or a GGUF
``split`` over N GPUs): its ``Need`` then has one share per device, the main
device's (rank 0, llama.cpp's ``main_gpu``) first. Such a placement is one unit:
all its devices on one node, evicting it frees its share on each of them, and
defrag moves it whole or not at all.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

Strategy = Literal["lru", "priority"]


@dataclass(frozen=True)
class Resident:
    """A model loaded on a device, as eviction sees it."""

    model_id: str
    memory_mb: int  # on this room's device (a model spanning devices is in each room)
    last_used: float
    pinned: bool = False
    priority: int = 50
    busy: bool = False  # requests in flight or queued: never evicted, never moved
    movable: bool = True  # defrag may reload it elsewhere (it has a profile, no node lock)
    allowed_nodes: frozenset[str] = frozenset()  # empty: any node
    width: int = 1  # devices (or CPU ranks) the model spans on its node; moved as one


@dataclass(frozen=True)
class Room:
    """One device of one node: what can be allocated now and who lives there."""

    node: str
    device: str
    free_mb: int
    residents: tuple[Resident, ...] = ()
    # Ranks of one multi-device model this device may hold: 1 for a GPU; the CPU of a
    # GPU-less node as many as its --cpu-tp-ranks (all sharing its memory); 0 where it
    # takes no part (the CPU of a GPU node). Single-device loads ignore it.
    ranks: int = 1


@dataclass(frozen=True)
class Need:
    """What a load takes: MB on each of ``len(shares_mb)`` devices of one node, the main
    device's first (tensor-parallel ranks are equal; a GGUF split's main GPU holds more)."""

    shares_mb: tuple[int, ...]

    @property
    def width(self) -> int:
        return len(self.shares_mb)

    @property
    def total_mb(self) -> int:
        return sum(self.shares_mb)


@dataclass(frozen=True)
class LoadPlan:
    node: str
    device: str  # the main device
    evict: tuple[str, ...] = ()
    # A multi-device plan: each device with the MB charged there, main first (a device
    # twice for two CPU ranks). Empty: ``device`` alone, charged the whole need.
    shares: tuple[tuple[str, int], ...] = ()

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(device for device, _ in self.shares) or (self.device,)


@dataclass(frozen=True)
class NoRoom:
    """Why a load fits nowhere. ``transient``: it would fit once busy models go idle."""

    need_mb: int
    largest_slot_mb: int
    largest_slot_node: str | None
    transient: bool
    detail: str = ""  # for a multi-device need: why no node's devices can take it


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


def plan_load(rooms: Sequence[Room], need: int | Need, strategy: Strategy) -> LoadPlan | NoRoom:
    """Pick a device for a model of ``need`` MB: a free fit first, else the cheapest eviction.

    A free fit takes the tightest device (best fit), leaving big gaps for big models.
    When every device needs eviction, the chosen one is where the most valuable model
    thrown out is least valuable, then where fewest models leave. A ``Need`` wider than
    one device is placed by the same rules over sets of devices of one node.
    """
    if isinstance(need, Need) and need.width > 1:
        return _plan_wide(rooms, need, strategy)
    need_mb = need.total_mb if isinstance(need, Need) else need
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
    held = _holdings(rooms)
    best: tuple[int, list[Move]] | None = None
    for source in rooms:
        if not source.residents or any(not _can_move(r) for r in source.residents):
            continue
        moves = _rehome(source, [room for room in rooms if room is not source], held)
        if moves is None:
            continue
        slot = source.free_mb + sum(r.memory_mb for r in source.residents)
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


def _rehome(
    source: Room, others: list[Room], held: dict[tuple[str, str], dict[str, int]]
) -> list[Move] | None:
    spaces = [_Space(room, room.free_mb) for room in others]
    moves = []
    for resident in sorted(source.residents, key=lambda r: -r.memory_mb):
        shares = held[(source.node, resident.model_id)]
        if resident.width > 1:
            # several devices (or CPU ranks): reloaded whole on another node, or not moved
            target = _rehome_wide(source.node, resident, shares, spaces)
            if target is None:
                return None
            moves.append(Move(resident.model_id, source.node, target, sum(shares.values())))
            continue
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


# -- several devices -----------------------------------------------------------------------


def _by_node(rooms: Iterable[Room]) -> dict[str, list[Room]]:
    nodes: dict[str, list[Room]] = {}
    for room in rooms:
        nodes.setdefault(room.node, []).append(room)
    return nodes


def _holdings(rooms: Iterable[Room]) -> dict[tuple[str, str], dict[str, int]]:
    """(node, model id) -> MB on each device it holds: a model on several devices is a
    resident of each of their rooms, and leaving frees every one of them."""
    held: dict[tuple[str, str], dict[str, int]] = {}
    for room in rooms:
        for resident in room.residents:
            held.setdefault((room.node, resident.model_id), {})[room.device] = resident.memory_mb
    return held


Assignment = tuple[tuple[Room, int], ...]  # (device, MB charged there), main first


def _assignments(node_rooms: Sequence[Room], need: Need) -> list[Assignment]:
    """Every way to put ``need``'s shares on the devices of one node: a device once per
    rank it may hold, each distinct device tried as the main one."""
    slots = [room for room in node_rooms for _ in range(room.ranks)]
    found: dict[tuple, Assignment] = {}
    for combo in itertools.combinations(slots, need.width):
        for main in dict.fromkeys(combo):
            rest = list(combo)
            rest.remove(main)
            rest.sort(key=lambda room: room.device)
            key = (main.device, tuple(room.device for room in rest))
            found.setdefault(
                key, ((main, need.shares_mb[0]), *zip(rest, need.shares_mb[1:], strict=True))
            )
    return list(found.values())


def _required(assignment: Assignment) -> dict[str, int]:
    required: dict[str, int] = {}
    for room, mb in assignment:
        required[room.device] = required.get(room.device, 0) + mb
    return required


def _wide_victims(
    node_rooms: Sequence[Room], required: Mapping[str, int], order: Sequence[Resident]
) -> list[Resident] | None:
    """The residents to evict, in ``order``, until every device of ``required`` has its
    share; a resident on none of the devices still short is skipped. None: never enough."""
    free = {room.device: room.free_mb for room in node_rooms}
    held = _holdings(node_rooms)
    chosen: list[Resident] = []
    for resident in order:
        short = [device for device, mb in required.items() if free[device] < mb]
        if not short:
            break
        frees = held[(node_rooms[0].node, resident.model_id)]
        if not any(device in frees for device in short):
            continue
        chosen.append(resident)
        for device, mb in frees.items():
            free[device] += mb
    return chosen if all(free[d] >= mb for d, mb in required.items()) else None


def _node_residents(node_rooms: Sequence[Room]) -> list[Resident]:
    return list({r.model_id: r for room in node_rooms for r in room.residents}.values())


def _plan_wide(rooms: Sequence[Room], need: Need, strategy: Strategy) -> LoadPlan | NoRoom:
    """``plan_load`` for a need of several devices: a free fit over a set of one node's
    devices first (least memory left over), else the cheapest eviction there, where
    evicting a model frees its share on every device it holds."""
    fits: list[tuple[tuple, LoadPlan]] = []
    evictions: list[tuple[tuple, LoadPlan]] = []
    transient = False
    for node, node_rooms in sorted(_by_node(rooms).items()):
        residents = _node_residents(node_rooms)
        order = eviction_order(residents, strategy)
        patient = sorted((r for r in residents if not r.pinned), key=lambda r: _value(r, strategy))
        for assignment in _assignments(node_rooms, need):
            required = _required(assignment)
            shares = tuple((room.device, mb) for room, mb in assignment)
            free = {room.device: room.free_mb for room in node_rooms}
            if all(free[device] >= mb for device, mb in required.items()):
                slack = sum(free[device] - mb for device, mb in required.items())
                fits.append(((slack, node, shares), LoadPlan(node, shares[0][0], (), shares)))
                continue
            victims = _wide_victims(node_rooms, required, order)
            if victims is not None:
                cost = (_value(victims[-1], strategy), len(victims), node, shares)
                evict = tuple(v.model_id for v in victims)
                evictions.append((cost, LoadPlan(node, shares[0][0], evict, shares)))
            elif _wide_victims(node_rooms, required, patient) is not None:
                transient = True  # it fits once the busy models there go idle
    if fits:
        return min(fits, key=lambda option: option[0])[1]
    if evictions:
        return min(evictions, key=lambda option: option[0])[1]
    return _no_room_wide(rooms, need, transient)


def _no_room_wide(rooms: Sequence[Room], need: Need, transient: bool) -> NoRoom:
    nodes = _by_node(rooms)
    width = {node: sum(room.ranks for room in node_rooms) for node, node_rooms in nodes.items()}
    widest = max(width, key=lambda node: (width[node], node), default=None)
    share = max(need.shares_mb)
    if widest is None or width[widest] < need.width:
        most = f"the most is {width[widest]}, on {widest}" if widest else "there are none"
        detail = (
            f"it needs {need.width} devices of one node, and no eligible node has "
            f"{need.width} that can take part ({most})"
        )
        return NoRoom(need.total_mb, 0, widest, False, detail)
    # the best any node could do: the width-th largest slot among its devices
    best_slot, best_node = 0, None
    for node, node_rooms in sorted(nodes.items()):
        if width[node] < need.width:
            continue
        slots = sorted(
            (
                room.free_mb + sum(r.memory_mb for r in eviction_order(room.residents, "lru"))
                for room in node_rooms
                for _ in range(room.ranks)
            ),
            reverse=True,
        )
        if slots[need.width - 1] > best_slot or best_node is None:
            best_slot, best_node = slots[need.width - 1], node
    detail = (
        f"it needs {need.width} devices of one node with up to {share} MB each; the best, "
        f"on {best_node}, frees {best_slot} MB on each of {need.width} devices"
    )
    return NoRoom(need.total_mb, best_slot, best_node, transient, detail)


def _rehome_wide(
    source_node: str, resident: Resident, shares: Mapping[str, int], spaces: list[_Space]
) -> str | None:
    """Another node whose free devices take the whole of a multi-device model (nothing
    evicted); the spaces there are charged. None: it stays, and so does its device."""
    if len(shares) == resident.width:
        parts = tuple(sorted(shares.values(), reverse=True))  # the main share is the largest
    else:  # ranks sharing one device (CPU TP): equal parts of what it holds
        parts = (-(-sum(shares.values()) // resident.width),) * resident.width
    per_node: dict[str, list[_Space]] = {}
    for space in spaces:
        per_node.setdefault(space.room.node, []).append(space)
    for node, node_spaces in sorted(per_node.items()):
        if node == source_node or (resident.allowed_nodes and node not in resident.allowed_nodes):
            continue
        if any(
            resident.model_id in space.placed
            or any(r.model_id == resident.model_id for r in space.room.residents)
            for space in node_spaces
        ):
            continue  # one copy per node
        by_device = {space.room.device: space for space in node_spaces}
        rooms = [replace(space.room, free_mb=space.free_mb) for space in node_spaces]
        for assignment in _assignments(rooms, Need(parts)):
            required = _required(assignment)
            if all(by_device[device].free_mb >= mb for device, mb in required.items()):
                for device, mb in required.items():
                    by_device[device].free_mb -= mb
                    by_device[device].placed.append(resident.model_id)
                return node
    return None
