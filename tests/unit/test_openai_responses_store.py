"""Stored responses over real SQLite and PostgreSQL databases: what is kept, what a follow-up reads,
deletion, the age, count and size bounds enforced on write, and the schema's upgrade."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cortex.gateway.database import Database
from cortex.gateway.response_store import ResponseStore
from cortex.protocol import openai_responses as rs
from cortex.translate import openai_responses as tr

ASKED = rs.ResponsesRequest(model="m", input="hi")


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The store runs alike over both databases the gateway supports."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'cortex.db'}"
    else:
        from postgres import new_database

        url = new_database(request.getfixturevalue("postgres"))
    db = Database.open(url)
    yield db
    await db.close()


async def store(
    database: Database, *, ttl_s: float = 3600, max_stored: int = 100, max_bytes: int = 1 << 20
) -> ResponseStore:
    kept = ResponseStore(database, ttl_s=ttl_s, max_stored=max_stored, max_bytes=max_bytes)
    await kept.migrate()
    return kept


def answer(response_id: str, text: str = "Hello.") -> rs.Response:
    completion = {"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}
    return tr.to_response(completion, tr.echo(ASKED, response_id=response_id))


async def count(database: Database) -> int:
    async with database.engine.connect() as conn:
        return (await conn.execute(sa.text("SELECT count(*) FROM responses"))).scalar_one()


async def test_a_stored_response_is_read_back_with_its_conversation(database: Database) -> None:
    kept = await store(database)
    items = [{"type": "message", "role": "user", "content": "hi"}]
    response = answer("resp_1")
    kept.save_later(response, items)
    stored = await kept.load("resp_1")  # waits for the write under way
    assert stored is not None and stored.response == response and stored.items == items
    follow = stored.conversation()
    assert follow[0] == items[0]
    assert follow[1]["type"] == "message" and follow[1]["content"][0]["text"] == "Hello."
    # what a follow-up sends on is valid input for the next request
    asked = rs.ResponsesRequest(model="m", input=[*follow, {"role": "user", "content": "and?"}])
    body = tr.to_chat_request(asked, tr.input_items(asked), model="m")
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


async def test_migrating_twice_changes_nothing(database: Database) -> None:
    kept = await store(database)
    kept.save_later(answer("resp_1"), [])
    await kept.close()
    await kept.migrate()
    assert await kept.load("resp_1") is not None


async def test_delete(database: Database) -> None:
    kept = await store(database)
    kept.save_later(answer("resp_1"), [])
    assert await kept.delete("resp_1") is True
    assert await kept.load("resp_1") is None
    assert await kept.delete("resp_1") is False
    assert await kept.load("resp_unknown") is None


async def test_responses_older_than_the_ttl_are_gone_and_pruned(database: Database) -> None:
    kept = await store(database, ttl_s=0.2)
    kept.save_later(answer("resp_old"), [])
    await kept.close()
    await asyncio.sleep(0.3)
    assert await kept.load("resp_old") is None  # expired, though not pruned yet
    kept.save_later(answer("resp_new"), [])
    await kept.close()
    assert await count(database) == 1  # the write pruned the expired row
    assert await kept.load("resp_new") is not None


async def test_beyond_max_stored_the_oldest_go_first(database: Database) -> None:
    kept = await store(database, max_stored=2)
    for n in range(4):
        kept.save_later(answer(f"resp_{n}"), [])
        await kept.close()  # one after the other: their order is their age
    assert await count(database) == 2
    assert [await kept.load(f"resp_{n}") is not None for n in range(4)] == [
        False,
        False,
        True,
        True,
    ]


def long_conversation(words: int) -> list[dict[str, str]]:
    return [{"type": "message", "role": "user", "content": "word " * words}]


async def test_beyond_max_bytes_the_oldest_go_first(database: Database) -> None:
    kept = await store(database, max_bytes=12_000)  # room for two of these, not three
    for n in range(4):
        kept.save_later(answer(f"resp_{n}"), long_conversation(1000))  # ~5 kB each
        await kept.close()
    assert [await kept.load(f"resp_{n}") is not None for n in range(4)] == [
        False,
        False,
        True,
        True,
    ]
    async with database.engine.connect() as conn:
        total = (await conn.execute(sa.text("SELECT sum(size) FROM responses"))).scalar_one()
    assert 10_000 < total <= 12_000


async def test_a_response_larger_than_the_whole_bound_is_not_stored(database: Database) -> None:
    kept = await store(database, max_bytes=12_000)
    kept.save_later(answer("resp_small"), [])
    kept.save_later(answer("resp_huge"), long_conversation(5000))
    await kept.close()
    assert await kept.load("resp_huge") is None
    assert await kept.load("resp_small") is not None  # and it pushed out nothing


async def test_a_version_1_table_is_upgraded_with_its_rows_sized(database: Database) -> None:
    from cortex.gateway.response_store import MIGRATIONS

    await database.migrate("responses", MIGRATIONS[:1])  # as the first release left it
    async with database.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO responses (id, stored_at, response, input_items) "
                "VALUES ('resp_old', :now, :response, '[]')"
            ),
            {"now": time.time(), "response": answer("resp_old").model_dump_json()},
        )
    kept = await store(database)  # migrates to the current version
    assert await kept.load("resp_old") is not None
    async with database.engine.connect() as conn:
        size = (await conn.execute(sa.text("SELECT size FROM responses"))).scalar_one()
    assert size == len(answer("resp_old").model_dump_json()) + 2
