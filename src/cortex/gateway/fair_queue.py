"""Fair admission in front of each model: one client's burst does not starve another's.

While a model has room (fewer requests in flight from this gateway than the batch
places of the nodes holding it), a request goes straight through. Once it is full,
requests wait here rather than in the neuron's first-come queue, and each freed place
goes to the next *tenant* (an API key; everyone is one tenant without keys) by stride
scheduling: each tenant's pass advances by 1/weight per admission and the lowest pass
goes next, so a `high` key gets four places for a `normal` key's two and a `low` key's
one, and a `low` key is slowed, never starved. A tenant that was idle rejoins at the
current pass rather than with credit saved up while away.

Written here rather than taken from a library: asyncio has no weighted fair queue, and
the bookkeeping is a heap-free scan over the few tenants waiting on one model.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from cortex.errors import Overloaded

Priority = Literal["high", "normal", "low"]
WEIGHTS: dict[str, int] = {"high": 4, "normal": 2, "low": 1}


@dataclass(frozen=True)
class Tenant:
    """Whose request this is, for fairness: a key's id and priority."""

    id: str = "anonymous"
    priority: Priority = "normal"


# Set by authentication once it knows the key; unset: everyone without keys, one tenant.
current_tenant: ContextVar[Tenant | None] = ContextVar("cortex_tenant", default=None)
_EVERYONE = Tenant()


class Ticket:
    """One admitted request's place; ``release`` once it has ended (idempotent)."""

    def __init__(self, line: _ModelLine) -> None:
        self._line: _ModelLine | None = line

    def release(self) -> None:
        line, self._line = self._line, None
        if line is not None:
            line.running -= 1
            line.admit_waiting()


@dataclass
class _Waiter:
    tenant: Tenant
    admitted: asyncio.Future[None]


@dataclass
class _ModelLine:
    """One model's places and the tenants waiting for them."""

    capacity: Callable[[], int]
    running: int = 0
    queues: dict[str, deque[_Waiter]] = field(default_factory=dict)
    passes: dict[str, float] = field(default_factory=dict)
    clock: float = 0.0  # the pass of the last admission: where returning tenants start

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self.queues.values())

    def has_room(self) -> bool:
        return self.running < max(1, self.capacity())

    def admit_waiting(self) -> None:
        while self.queues and self.has_room():
            tenant_id = min(self.queues, key=lambda t: self.passes.get(t, self.clock))
            queue = self.queues[tenant_id]
            waiter = queue.popleft()
            if not queue:
                del self.queues[tenant_id]
            if waiter.admitted.done():  # its client left while it waited
                continue
            self._charge(waiter.tenant)
            self.running += 1
            waiter.admitted.set_result(None)

    def _charge(self, tenant: Tenant) -> None:
        start = max(self.passes.get(tenant.id, self.clock), self.clock)
        self.clock = start
        self.passes[tenant.id] = start + 1 / WEIGHTS[tenant.priority]
        if len(self.passes) > 4096:  # forget tenants long idle: they rejoin at the clock
            self.passes = {t: p for t, p in self.passes.items() if p > self.clock}


class FairQueue:
    """Admission per model. ``capacity(model_id)``: its batch places on the nodes that
    hold it; ``max_waiting(model_id)``: how many may wait before a 429."""

    def __init__(self, capacity: Callable[[str], int], max_waiting: Callable[[str], int]) -> None:
        self._capacity = capacity
        self._max_waiting = max_waiting
        self._lines: dict[str, _ModelLine] = {}

    def _line(self, model_id: str) -> _ModelLine:
        line = self._lines.get(model_id)
        if line is None:
            line = self._lines[model_id] = _ModelLine(lambda: self._capacity(model_id))
        return line

    def would_wait(self, model_id: str) -> bool:
        line = self._lines.get(model_id)
        return line is not None and (bool(line.queues) or not line.has_room())

    def waiting(self, model_id: str) -> int:
        line = self._lines.get(model_id)
        return line.waiting if line else 0

    def places_grew(self, model_id: str) -> None:
        """The model got more places (a new copy): admit who waits for them now, rather
        than at the next release."""
        line = self._lines.get(model_id)
        if line is not None:
            line.admit_waiting()

    async def enter(self, model_id: str, tenant: Tenant | None = None) -> Ticket:
        """A place for one request on ``model_id``: at once while there is room and
        nobody waits, else in the tenant's turn."""
        tenant = tenant or current_tenant.get() or _EVERYONE
        line = self._line(model_id)
        if not line.queues and line.has_room():
            line._charge(tenant)
            line.running += 1
            return Ticket(line)
        limit = self._max_waiting(model_id)
        if line.waiting >= limit:
            raise Overloaded(
                f"{line.waiting} requests already wait for '{model_id}'; retry shortly.",
                retry_after_s=2,
            )
        waiter = _Waiter(tenant, asyncio.get_running_loop().create_future())
        line.queues.setdefault(tenant.id, deque()).append(waiter)
        try:
            await waiter.admitted
        except asyncio.CancelledError:
            if waiter.admitted.done() and not waiter.admitted.cancelled():
                Ticket(line).release()  # admitted just as its client left: pass it on
            else:
                waiter.admitted.cancel()
                _drop(line, tenant.id, waiter)
            raise
        return Ticket(line)


def _drop(line: _ModelLine, tenant_id: str, waiter: _Waiter) -> None:
    queue = line.queues.get(tenant_id)
    if queue is None:
        return
    try:
        queue.remove(waiter)
    except ValueError:
        return
    if not queue:
        del line.queues[tenant_id]
