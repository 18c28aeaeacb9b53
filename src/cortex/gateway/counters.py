"""Requests per key and minute, counted in PostgreSQL so that a key's rpm holds across
every gateway sharing the database (component ``rate_limits``).

One round trip per request of a key with an ``rpm``: an upsert that adds one to the
(key, minute) row and returns the new count, atomic under concurrent gateways. Rows of
past minutes are deleted now and then. With SQLite (one gateway per file) the count is
kept in the process instead (``limits.Limiter`` with no counter), at no I/O cost.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from cortex.gateway.database import Database

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


class MinuteCounter:
    def __init__(self, database: Database) -> None:
        self._db = database
        insert = postgresql.insert(MINUTES).values(
            key_id=sa.bindparam("k"), minute=sa.bindparam("m"), requests=1
        )
        self._upsert = insert.on_conflict_do_update(
            index_elements=[MINUTES.c.key_id, MINUTES.c.minute],
            set_={"requests": MINUTES.c.requests + 1},
        ).returning(MINUTES.c.requests)
        self._swept = 0

    async def migrate(self) -> None:
        await self._db.migrate("rate_limits", MIGRATIONS)

    async def count(self, key_id: str, minute: int) -> int:
        """The minute's requests of ``key_id`` across all gateways, this one included."""
        async with self._db.engine.begin() as conn:
            count = (await conn.execute(self._upsert, {"k": key_id, "m": minute})).scalar_one()
            if minute != self._swept:  # once a minute per gateway: drop the past
                self._swept = minute
                await conn.execute(MINUTES.delete().where(MINUTES.c.minute < minute - 1))
        return int(count)
