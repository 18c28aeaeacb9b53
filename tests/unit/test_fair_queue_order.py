"""Fair admission per model: straight through while there is room; once full, freed
places go round the tenants by weight, and a flood from one key cannot starve another."""

from __future__ import annotations

import asyncio

import pytest

from cortex.errors import Overloaded
from cortex.gateway.fair_queue import FairQueue, Tenant, Ticket

A, B = Tenant("a"), Tenant("b")


def queue(places: int = 2, waiting: int = 100) -> FairQueue:
    return FairQueue(lambda _model: places, lambda _model: waiting)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_room_admits_at_once_and_a_full_model_waits() -> None:
    fair = queue(places=2)
    first, second = await fair.enter("m", A), await fair.enter("m", A)
    assert fair.would_wait("m")
    third = asyncio.create_task(fair.enter("m", A))
    await settle()
    assert not third.done() and fair.waiting("m") == 1
    first.release()
    first.release()  # idempotent: one place freed, not two
    await settle()
    assert third.done() and fair.waiting("m") == 0
    assert fair.would_wait("m")
    second.release()
    (await third).release()
    assert not fair.would_wait("m")


async def test_a_flood_from_one_tenant_does_not_starve_another() -> None:
    """The issue's case: A floods 50, B sends 1 a moment later: B starts within the next
    ``max_batch`` admissions (here the very next)."""
    fair = queue(places=4)
    order: list[str] = []

    async def request(tenant: Tenant) -> None:
        ticket = await fair.enter("m", tenant)
        order.append(tenant.id)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        ticket.release()

    flood = [asyncio.create_task(request(A)) for _ in range(50)]
    await asyncio.sleep(0)
    late = asyncio.create_task(request(B))
    await asyncio.gather(*flood, late)
    assert order.index("b") == 4, order[:12]  # first come, first served: 50


async def test_places_go_by_weight_and_low_is_never_starved() -> None:
    fair = queue(places=1)
    holder = await fair.enter("m", Tenant("x"))
    order: list[str] = []

    async def request(tenant: Tenant) -> None:
        ticket = await fair.enter("m", tenant)
        order.append(tenant.priority)
        await asyncio.sleep(0)
        ticket.release()

    tasks = [
        asyncio.create_task(request(Tenant(name, priority)))
        for name, priority in (("h", "high"), ("n", "normal"), ("l", "low"))
        for _ in range(14)
    ]
    await settle()
    holder.release()
    await asyncio.gather(*tasks)
    first = order[:14]
    assert first.count("high") > first.count("normal") > first.count("low") >= 1, first


async def test_a_waiter_that_leaves_gives_up_its_turn() -> None:
    fair = queue(places=1)
    holder = await fair.enter("m", A)
    leaving = asyncio.create_task(fair.enter("m", A))
    staying = asyncio.create_task(fair.enter("m", B))
    await settle()
    leaving.cancel()
    await settle()
    holder.release()
    await settle()
    ticket = await staying
    assert isinstance(ticket, Ticket) and fair.waiting("m") == 0
    ticket.release()
    assert not fair.would_wait("m")


async def test_past_max_waiting_is_a_429() -> None:
    fair = queue(places=1, waiting=1)
    await fair.enter("m", A)
    waiting = asyncio.create_task(fair.enter("m", A))
    await settle()
    with pytest.raises(Overloaded, match="already wait"):
        await fair.enter("m", B)
    waiting.cancel()
