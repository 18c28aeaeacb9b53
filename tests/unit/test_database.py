"""The gateway's database: URLs, and migrations applied once, in order, per component."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from cortex.gateway.database import Database, async_url


def test_urls_pick_the_async_drivers(tmp_path: Path) -> None:
    assert async_url(None, tmp_path) == f"sqlite+aiosqlite:///{tmp_path / 'cortex.db'}"
    assert async_url(f"sqlite:///{tmp_path}/x/y.db").startswith("sqlite+aiosqlite:///")
    assert (tmp_path / "x").is_dir()  # the file's folder is made
    assert async_url("postgresql://u:p@h:5/db") == "postgresql+asyncpg://u:p@h:5/db"
    with pytest.raises(ValueError, match="only sqlite"):
        async_url("mysql://h/db")


async def test_migrations_run_once_and_in_order(tmp_path: Path) -> None:
    ran: list[str] = []

    def create(conn: sa.Connection) -> None:
        ran.append("create")
        conn.exec_driver_sql("CREATE TABLE things (id INTEGER PRIMARY KEY)")

    def add_name(conn: sa.Connection) -> None:
        ran.append("add_name")
        conn.exec_driver_sql("ALTER TABLE things ADD COLUMN name TEXT")

    database = Database.open(None, tmp_path)
    await database.migrate("things", [create])
    await database.migrate("things", [create])  # nothing new
    await database.migrate("things", [create, add_name])
    await database.close()
    assert ran == ["create", "add_name"]

    reopened = Database.open(None, tmp_path)
    async with reopened.engine.begin() as conn:
        await conn.exec_driver_sql("INSERT INTO things (id, name) VALUES (1, 'a')")
        mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
    assert mode == "wal"
    with pytest.raises(RuntimeError, match="newer than this gateway"):
        await reopened.migrate("things", [create])
    await reopened.close()


async def test_postgres_migrations_and_driver(postgres: str) -> None:
    from postgres import new_database

    database = Database.open(new_database(postgres))
    assert not database.is_sqlite

    def create(conn: sa.Connection) -> None:
        conn.exec_driver_sql("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)")

    await database.migrate("things", [create])
    await database.migrate("things", [create])
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql("INSERT INTO things (id, name) VALUES (1, 'a')")
        assert (await conn.exec_driver_sql("SELECT name FROM things")).scalar() == "a"
    await database.close()
