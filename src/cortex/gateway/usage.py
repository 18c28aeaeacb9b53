"""Exact usage per key, model and UTC day (component ``usage``): requests, errors, input,
cached input and output tokens, and total duration.

Off the request path: ``add`` only adds to an in-memory accumulator when a request's
record is written; a background task (``run``) flushes it every ``FLUSH_INTERVAL_S`` as
one transaction of upserts that *add* to the stored totals (so several gateways can
share the rows), and ``close`` flushes what is left at shutdown. A flush that fails
keeps its totals for the next try: nothing is counted twice or lost while the process
lives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from cortex.gateway.database import Database
from cortex.protocol.admin import UsageRow

log = logging.getLogger("cortex.gateway.usage")

FLUSH_INTERVAL_S = 1.0

_META = sa.MetaData()
USAGE = sa.Table(
    "cortex_usage",
    _META,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),  # YYYY-MM-DD, UTC
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("cached_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Index("cortex_usage_day", "day"),  # reports and budgets read from a day on
)
_COUNTS = ("requests", "errors", "input_tokens", "cached_tokens", "output_tokens", "duration_s")


def _create_usage(conn: Connection) -> None:
    USAGE.create(conn)  # with its index


MIGRATIONS = [_create_usage]


def utc_day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    duration_s: float = 0.0

    def merge(self, other: Totals) -> None:
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


Bucket = tuple[str, str, str]  # key id, model, day


class UsageLedger:
    """The accumulator, its flushes, and the queries over the stored totals."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._pending: dict[Bucket, Totals] = {}

    async def migrate(self) -> None:
        await self._db.migrate("usage", MIGRATIONS)

    def add(
        self,
        key_id: str,
        model: str,
        *,
        input_tokens: int,
        cached_tokens: int,
        output_tokens: int,
        duration_s: float,
        error: bool,
        at: float | None = None,
    ) -> None:
        """One request that has ended: a dict update, nothing more."""
        bucket = (key_id, model, utc_day(time.time() if at is None else at))
        totals = self._pending.get(bucket)
        if totals is None:
            totals = self._pending[bucket] = Totals()
        totals.requests += 1
        totals.errors += error
        totals.input_tokens += input_tokens
        totals.cached_tokens += cached_tokens
        totals.output_tokens += output_tokens
        totals.duration_s += duration_s

    async def flush(self) -> None:
        """Writes the accumulated totals, adding them to the stored ones."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(self._upsert(), _rows(batch))
        except BaseException:
            for bucket, totals in batch.items():  # for the next try, before newer totals
                self._pending.setdefault(bucket, Totals()).merge(totals)
            raise

    def _upsert(self) -> sa.Insert:
        insert = (postgresql.insert if not self._db.is_sqlite else sqlite.insert)(USAGE)
        return insert.on_conflict_do_update(
            index_elements=[USAGE.c.key_id, USAGE.c.model, USAGE.c.day],
            set_={name: USAGE.c[name] + insert.excluded[name] for name in _COUNTS},
        )

    async def run(self) -> None:
        """The background flush, until cancelled."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away: keep counting, retry next time
                log.warning("usage: flush failed, retrying: %s", exc)

    async def close(self) -> None:
        try:
            await self.flush()
        except Exception as exc:
            log.error("usage: the last flush failed, %d buckets lost: %s", len(self._pending), exc)

    async def spent(self, key_id: str, since_day: str) -> int:
        """Input + output tokens of ``key_id`` stored from ``since_day`` on."""
        total = sa.func.coalesce(sa.func.sum(USAGE.c.input_tokens + USAGE.c.output_tokens), 0)
        query = sa.select(total).where(USAGE.c.key_id == key_id, USAGE.c.day >= since_day)
        async with self._db.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def report(
        self,
        *,
        key_id: str | None = None,
        since_day: str | None = None,
        model: str | None = None,
        by_day: bool = False,
    ) -> list[UsageRow]:
        """Stored totals per key and model (and day, with ``by_day``), filtered."""
        groups: Sequence[sa.ColumnElement] = (USAGE.c.key_id, USAGE.c.model) + (
            (USAGE.c.day,) if by_day else ()
        )
        sums = [sa.func.sum(USAGE.c[name]).label(name) for name in _COUNTS]
        query = sa.select(*groups, *sums).group_by(*groups).order_by(*groups)
        if key_id is not None:
            query = query.where(USAGE.c.key_id == key_id)
        if since_day is not None:
            query = query.where(USAGE.c.day >= since_day)
        if model is not None:
            query = query.where(USAGE.c.model == model)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            UsageRow(
                key_id=row.key_id,
                model=row.model,
                day=row.day if by_day else None,
                requests=int(row.requests),
                errors=int(row.errors),
                input_tokens=int(row.input_tokens),
                cached_tokens=int(row.cached_tokens),
                output_tokens=int(row.output_tokens),
                duration_s=round(float(row.duration_s), 6),
            )
            for row in rows
        ]


def _rows(batch: dict[Bucket, Totals]) -> list[dict[str, object]]:
    return [
        {"key_id": key_id, "model": model, "day": day, **totals.__dict__}
        for (key_id, model, day), totals in batch.items()
    ]
