"""The keys store and the usage ledger, on SQLite and on PostgreSQL: keys hashed,
lookups cached for a bounded time, revocation, usage added up exactly across flushes."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from cortex.errors import InvalidRequest
from cortex.gateway.counters import LEASE_FRACTION, MINUTES, MinuteCounter, granted
from cortex.gateway.database import Database
from cortex.gateway.keys import KEYS, KeyStore
from cortex.gateway.usage import UsageLedger
from cortex.protocol.admin import LIMIT_MAX, KeyCreate, KeyUpdate


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        opened = Database.open(None, tmp_path)
    else:
        from postgres import new_database

        opened = Database.open(new_database(request.getfixturevalue("postgres")))
    yield opened
    await opened.close()


async def test_keys_are_stored_hashed_and_found_by_their_secret(database: Database) -> None:
    store = KeyStore(database, ttl_s=0)
    await store.migrate()
    assert not store.any_keys
    created = await store.create(KeyCreate(name="team-a", models=["qwen*"], rpm=10))
    assert created.key.startswith("ck-") and created.prefix == created.key[:10]
    assert store.any_keys
    async with database.engine.connect() as conn:
        row = (await conn.execute(sa.select(KEYS))).one()
    assert row.hash == hashlib.sha256(created.key.encode()).hexdigest()
    assert created.key not in str(tuple(row))  # only the hash is stored
    found = await store.lookup(created.key)
    assert found is not None and found.id == created.id and found.models == ("qwen*",)
    assert await store.lookup(created.key + "x") is None
    assert await store.lookup("ck-unknown") is None
    # another gateway on the same database learns that keys exist
    other = KeyStore(database, ttl_s=0)
    await other.migrate()
    assert other.any_keys


async def test_update_revoke_and_expiry(database: Database) -> None:
    store = KeyStore(database, ttl_s=0)
    await store.migrate()
    created = await store.create(KeyCreate(name="b", budget_tokens=100, budget_period="day"))
    updated = await store.update(created.id, KeyUpdate(rpm=5, name=None, models=["a*"]))
    assert updated is not None and updated.rpm == 5 and updated.name == "b"
    assert updated.models == ("a*",)
    cleared = await store.update(created.id, KeyUpdate(rpm=None))
    assert cleared is not None and cleared.rpm is None and cleared.budget_tokens == 100
    with pytest.raises(InvalidRequest, match="go together"):
        await store.update(created.id, KeyUpdate(budget_period=None))
    assert await store.update("key_missing", KeyUpdate(rpm=1)) is None
    unbudgeted = await store.update(created.id, KeyUpdate(budget_tokens=None))
    assert unbudgeted is not None and unbudgeted.budget_period is None  # cleared together
    past = datetime.now(UTC) - timedelta(minutes=1)
    await store.update(created.id, KeyUpdate(expires_at=past))
    assert await store.lookup(created.key) is None  # expired
    await store.update(created.id, KeyUpdate(expires_at=None))
    assert await store.lookup(created.key) is not None
    revoked = await store.revoke(created.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert await store.lookup(created.key) is None
    assert [k.id for k in await store.all()] == [created.id]  # kept, as revoked


async def test_the_cache_bounds_how_long_a_revoked_key_works(database: Database) -> None:
    here, there = KeyStore(database, ttl_s=3600), KeyStore(database, ttl_s=3600)
    await here.migrate()
    await there.migrate()
    created = await here.create(KeyCreate(name="c"))
    assert await there.lookup(created.key) is not None  # cached there now
    await here.revoke(created.id)
    assert await here.lookup(created.key) is None  # its own change: at once
    assert await there.lookup(created.key) is not None  # the other: until its TTL ends
    there._ttl_s = 0  # the TTL has passed
    assert await there.lookup(created.key) is None


def test_a_budget_needs_its_period() -> None:
    with pytest.raises(ValueError, match="go together"):
        KeyCreate(name="x", budget_tokens=10)
    with pytest.raises(ValueError):
        KeyCreate(name="x", rpm=0)


async def test_usage_adds_up_across_flushes_and_gateways(database: Database) -> None:
    one, two = UsageLedger(database), UsageLedger(database)
    await one.migrate()
    await two.migrate()
    day1 = datetime(2026, 12, 4, 10, tzinfo=UTC).timestamp()
    day2 = day1 + 86400
    for ledger, at in ((one, day1), (one, day2), (two, day2)):
        ledger.add("k1", "m", input_tokens=10, cached_tokens=4, output_tokens=3,
                   duration_s=0.5, error=False, at=at)  # fmt: skip
    one.add("k1", "m", input_tokens=0, cached_tokens=0, output_tokens=0, duration_s=0.1,
            error=True, at=day2)  # fmt: skip
    one.add("k2", "n", input_tokens=7, cached_tokens=0, output_tokens=1, duration_s=0.1,
            error=False, at=day2)  # fmt: skip
    await one.flush()
    await two.flush()
    await one.flush()  # nothing new: nothing added twice
    (k1,) = await one.report(key_id="k1")
    assert (k1.requests, k1.errors, k1.input_tokens, k1.cached_tokens, k1.output_tokens) == (
        4, 1, 30, 12, 9,
    )  # fmt: skip
    assert k1.duration_s == pytest.approx(1.6)
    assert [r.day for r in await one.report(key_id="k1", by_day=True)] == [
        "2026-12-04", "2026-12-05",
    ]  # fmt: skip
    assert [(r.key_id, r.requests) for r in await one.report(since_day="2026-12-05")] == [
        ("k1", 3), ("k2", 1),
    ]  # fmt: skip
    assert [r.key_id for r in await one.report(model="n")] == ["k2"]
    assert await one.spent("k1", "2026-12-05") == 26
    assert await one.spent("k1", "2026-12-01") == 39


async def test_a_failed_flush_keeps_its_totals(tmp_path: Path) -> None:
    database = Database.open(None, tmp_path)
    ledger = UsageLedger(database)
    await ledger.migrate()
    ledger.add("k", "m", input_tokens=5, cached_tokens=0, output_tokens=2, duration_s=1,
               error=False)  # fmt: skip
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE cortex_usage RENAME TO away")
    with pytest.raises(sa.exc.OperationalError):
        await ledger.flush()
    ledger.add("k", "m", input_tokens=1, cached_tokens=0, output_tokens=1, duration_s=1,
               error=False)  # fmt: skip
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE away RENAME TO cortex_usage")
    await ledger.close()
    (row,) = await ledger.report()
    assert (row.requests, row.input_tokens, row.output_tokens) == (2, 6, 3)
    await database.close()


async def test_minute_counter_is_shared(postgres: str) -> None:
    from postgres import new_database

    url = new_database(postgres)
    first, second = Database.open(url), Database.open(url)
    try:
        a, b = MinuteCounter(first), MinuteCounter(second)
        await a.migrate()
        await b.migrate()
        # a small rpm: request by request, exact across both
        taken = [await gateway.take("k", 100, 3) for gateway in (a, b, a, b, a)]
        assert taken == [True, True, True, False, False]
        assert await b.take("k", 101, 3)  # a new minute; the old one is swept
        # a large rpm: leases of rpm // LEASE_FRACTION, never more than rpm in all
        rpm = 10 * LEASE_FRACTION
        admitted = 0
        for _ in range(rpm):
            admitted += await a.take("big", 100, rpm)
            admitted += await b.take("big", 100, rpm)
        assert rpm - 10 <= admitted <= rpm  # at most one lease left unused by the other
        async with first.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(MINUTES.c.requests).where(MINUTES.c.key_id == "big")
            )
            # leases of 10: the database asked some 20 times for the 400 requests, not 400
            assert rpm <= rows.scalar_one() <= rpm + 2 * (rpm // LEASE_FRACTION)
    finally:
        await first.close()
        await second.close()


def test_a_lease_is_cut_to_what_is_left() -> None:
    assert granted(10, 10, 100) == 10
    assert granted(10, 105, 100) == 5
    assert granted(10, 120, 100) == 0


async def test_limits_as_large_as_the_wire_allows(database: Database) -> None:
    """PostgreSQL's INTEGER is 32 bits: every limit is a BIGINT, capped on the wire."""
    store = KeyStore(database, ttl_s=0)
    await store.migrate()
    huge = LIMIT_MAX
    limits = {"rpm": huge, "tpm": huge, "max_parallel": huge, "budget_tokens": huge}
    created = await store.create(KeyCreate(name="big", budget_period="month", **limits))
    found = await store.lookup(created.key)
    assert found is not None and (found.rpm, found.tpm, found.budget_tokens) == (huge,) * 3
    with pytest.raises(ValueError):
        KeyCreate(name="x", tpm=LIMIT_MAX + 1)
