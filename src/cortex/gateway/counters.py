"""Requests per key and minute, counted in PostgreSQL so that a key's rpm holds across
every gateway sharing the database (component ``rate_limits``).

A gateway does not ask the database on every request: it takes a *lease* of
``rpm // LEASE_FRACTION`` requests (at least one) from the (key, minute) row, an upsert
that adds the lease and returns the new total, atomic under concurrent gateways, and
hands the lease out locally. A lease is cut to what is left under rpm, so the gateways
together never admit more than rpm in a minute; what a gateway leased and did not use is
lost for that minute (at most one lease per other gateway: 1/LEASE_FRACTION of rpm). A
key of up to LEASE_FRACTION rpm is counted request by request. Once the row reaches rpm,
the gateway refuses the rest of the minute without asking again. Rows of past minutes
are deleted now and then. With SQLite (one gateway per file) the count is kept in the
process instead (``limits.Limiter`` with no counter), at no I/O cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from cortex.gateway.database import Database

LEASE_FRACTION = 20

_META = sa.MetaData()
MINUTES = sa.Table(
    "cortex_rate_minutes",
    _META,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("minute", sa.BigInteger, primary_key=True),  # floor(epoch / 60)
    sa.Column("requests", sa.BigInteger, nullable=False),
)


def _create(conn: Connection) -> None:
    MINUTES.create(conn)


MIGRATIONS = [_create]


@dataclass
class _Lease:
    minute: int
    left: int = 0  # requests this gateway may still admit this minute
    full: bool = False  # the row has reached rpm: no more leases this minute


def granted(lease_size: int, total: int, rpm: int) -> int:
    """Of a lease of ``lease_size`` that took the row to ``total``, what fits under rpm."""
    return max(0, min(lease_size, rpm - (total - lease_size)))


class MinuteCounter:
    def __init__(self, database: Database) -> None:
        # one statement, committed on its own: no BEGIN/COMMIT round trips around it
        self._engine = database.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._db = database
        insert = postgresql.insert(MINUTES).values(
            key_id=sa.bindparam("k"), minute=sa.bindparam("m"), requests=sa.bindparam("n")
        )
        self._upsert = insert.on_conflict_do_update(
            index_elements=[MINUTES.c.key_id, MINUTES.c.minute],
            set_={"requests": MINUTES.c.requests + insert.excluded.requests},
        ).returning(MINUTES.c.requests)
        self._leases: dict[str, _Lease] = {}
        self._swept = 0

    async def migrate(self) -> None:
        await self._db.migrate("rate_limits", MIGRATIONS)

    async def take(self, key_id: str, minute: int, rpm: int) -> bool:
        """Whether one more request of ``key_id`` fits ``rpm`` in ``minute``, across all
        gateways; taken if so."""
        lease = self._leases.get(key_id)
        if lease is None or lease.minute != minute:
            lease = self._leases[key_id] = _Lease(minute)
        if lease.left == 0 and not lease.full:
            size = max(1, rpm // LEASE_FRACTION)
            total = await self._add(key_id, minute, size)
            if lease is self._leases.get(key_id):  # not replaced by a newer minute meanwhile
                lease.left += granted(size, total, rpm)
                lease.full = total >= rpm
        if lease.left == 0:
            return False
        lease.left -= 1
        return True

    async def _add(self, key_id: str, minute: int, size: int) -> int:
        async with self._engine.connect() as conn:
            total = await conn.execute(self._upsert, {"k": key_id, "m": minute, "n": size})
            count = int(total.scalar_one())
            if minute != self._swept:  # once a minute per gateway: drop the past
                self._swept = minute
                await conn.execute(MINUTES.delete().where(MINUTES.c.minute < minute - 1))
        return count
