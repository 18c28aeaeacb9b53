"""Stored responses (``store: true``), for ``GET /v1/responses/{id}`` and for a follow-up
naming ``previous_response_id``: each response object and the whole conversation of
input items that led to it (its predecessors' inputs and outputs included), so a
follow-up is answered from ``items + output + its own input`` with one read.

Component ``responses`` of the gateway database (``database.py``). Bounded by age
(``responses_ttl_s``), count (``responses_max_stored``) and size (``responses_max_mb``:
each row holds its whole conversation, so a few long agent sessions can outweigh
thousands of short answers), pruned on write, the oldest first. A write runs as a task
the route does not wait for (the answer is already on its way); a read or delete of
that id waits for it, so a client that retrieves right after the answer finds it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cortex.gateway.database import Database, Migration
from cortex.protocol import openai_responses as rs

log = logging.getLogger("cortex.gateway.responses")


def _responses_table(metadata: sa.MetaData, *, sized: bool) -> sa.Table:
    columns = [
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("stored_at", sa.Float, nullable=False, index=True),
        sa.Column("response", sa.Text, nullable=False),  # the response object, as JSON
        sa.Column("input_items", sa.Text, nullable=False),  # what it answered, as JSON
    ]
    if sized:  # schema version 2: the row's bytes, for the size bound
        columns.append(sa.Column("size", sa.BigInteger, nullable=False, server_default="0"))
    return sa.Table("responses", metadata, *columns)


_RESPONSES = _responses_table(sa.MetaData(), sized=True)


def _create_responses(conn: Connection) -> None:
    _responses_table(sa.MetaData(), sized=False).create(conn)  # as version 1 made it


def _add_size(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE responses ADD COLUMN size BIGINT NOT NULL DEFAULT 0"))
    # characters for bytes on the rows already there: close enough for a bound
    conn.execute(sa.text("UPDATE responses SET size = length(response) + length(input_items)"))
    # The size bound's scan reads this index alone, never the rows' long text.
    conn.execute(sa.text("CREATE INDEX responses_age_size ON responses (stored_at, size)"))


MIGRATIONS: list[Migration] = [_create_responses, _add_size]


@dataclass(frozen=True)
class Stored:
    response: rs.Response
    items: list[dict[str, Any]]  # the whole conversation it answered, oldest first

    def conversation(self) -> list[dict[str, Any]]:
        """What a follow-up continues: the items, then the response's output."""
        output = [item.model_dump(mode="json") for item in self.response.output]
        return [*self.items, *output]


class ResponseStore:
    def __init__(
        self, database: Database, *, ttl_s: float, max_stored: int, max_bytes: int
    ) -> None:
        self._database = database
        self._ttl_s = ttl_s
        self._max = max_stored
        self._max_bytes = max_bytes
        self._writes: dict[str, asyncio.Task[None]] = {}

    async def migrate(self) -> None:
        await self._database.migrate("responses", MIGRATIONS)

    def save_later(self, response: rs.Response, items: Sequence[dict[str, Any]]) -> None:
        """Stores ``response`` in the background; reads of its id wait for it."""
        task = asyncio.create_task(self._save(response, list(items)), name=f"store-{response.id}")
        self._writes[response.id] = task
        task.add_done_callback(lambda _: self._writes.pop(response.id, None))

    async def load(self, response_id: str) -> Stored | None:
        """The stored response, or ``None`` when it never was, expired or was deleted."""
        await self._written(response_id)
        query = sa.select(_RESPONSES.c.response, _RESPONSES.c.input_items).where(
            _RESPONSES.c.id == response_id, _RESPONSES.c.stored_at >= self._oldest()
        )
        async with self._database.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return Stored(rs.Response.model_validate_json(row.response), json.loads(row.input_items))

    async def delete(self, response_id: str) -> bool:
        await self._written(response_id)
        async with self._database.engine.begin() as conn:
            deleted = await conn.execute(_RESPONSES.delete().where(_RESPONSES.c.id == response_id))
        return deleted.rowcount > 0

    async def close(self) -> None:
        """Waits for the writes still running (at shutdown, before the database closes)."""
        await asyncio.gather(*self._writes.values(), return_exceptions=True)

    async def _written(self, response_id: str) -> None:
        task = self._writes.get(response_id)
        if task is not None:
            await asyncio.wait({task})

    async def _save(self, response: rs.Response, items: list[dict[str, Any]]) -> None:
        answered = response.model_dump_json()
        conversation = json.dumps(items, separators=(",", ":"))
        size = len(answered.encode()) + len(conversation.encode())
        if size > self._max_bytes:
            log.warning(
                "response %s not stored: %d bytes with its conversation, over responses_max_mb",
                response.id,
                size,
            )
            return
        row = {
            "id": response.id,
            "stored_at": time.time(),
            "response": answered,
            "input_items": conversation,
            "size": size,
        }
        try:
            async with self._database.engine.begin() as conn:
                await conn.execute(_RESPONSES.insert().values(**row))
                await self._prune(conn)
        except Exception:  # a lost write costs a later follow-up, never this answer
            log.exception("could not store response %s", response.id)

    async def _prune(self, conn: Any) -> None:
        """Drops what is older than the TTL, then all but the newest ``max_stored``, then
        the oldest until the rest weigh no more than ``max_bytes``."""
        table = _RESPONSES
        await conn.execute(table.delete().where(table.c.stored_at < self._oldest()))
        # the stored_at of the newest row past the bound: an index walk of max_stored rows
        cutoff = (
            await conn.execute(
                sa.select(table.c.stored_at)
                .order_by(table.c.stored_at.desc())
                .offset(self._max)
                .limit(1)
            )
        ).scalar()
        if cutoff is not None:
            await conn.execute(table.delete().where(table.c.stored_at <= cutoff))
        # Newest first, the running total of sizes; the newest row that takes it past
        # the bound goes, with everything older. A scan of at most max_stored rows.
        running = (
            sa.select(
                table.c.stored_at,
                sa.func.sum(table.c.size).over(order_by=table.c.stored_at.desc()).label("running"),
            )
        ).subquery()
        cutoff = (
            await conn.execute(
                sa.select(sa.func.max(running.c.stored_at)).where(
                    running.c.running > self._max_bytes
                )
            )
        ).scalar()
        if cutoff is not None:
            await conn.execute(table.delete().where(table.c.stored_at <= cutoff))

    def _oldest(self) -> float:
        return time.time() - self._ttl_s
