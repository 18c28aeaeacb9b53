"""The gateway's database: what must outlive a restart (stored responses, virtual keys,
usage). SQLite, one file in the state dir, with no configuration; PostgreSQL when
``database_url`` names one, so several gateways share it.

SQLAlchemy 2 (Core, async) over aiosqlite and asyncpg: one query language for both
databases, a pooled async engine, and SQL built from table objects rather than strings.
The ORM is not used: the rows are small records read and written by one module each.

Migrations: each component (``responses``, ``keys``, ``usage``...) owns its tables and an
ordered list of steps; ``migrate`` applies the steps a database has not seen yet and
records the component's version, at start-up, under a lock so two gateways starting at
once do not race. Written here rather than with alembic: alembic's script directory and
``env.py`` suit an application's one schema, not a package whose components each carry a
few tables; the bookkeeping is one table and one loop.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger("cortex.gateway.database")

# One step of a component's schema: run inside the migration's transaction.
Migration = Callable[[Connection], None]

_VERSIONS = sa.Table(
    "cortex_schema",
    sa.MetaData(),
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)


def default_state_dir() -> Path:
    """``$CORTEX_STATE_DIR``, else ``$XDG_STATE_HOME/cortex``, else ``~/.local/state/cortex``."""
    if explicit := os.environ.get("CORTEX_STATE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "cortex"


def async_url(url: str | None, state_dir: Path | None = None) -> str:
    """The SQLAlchemy async URL for a configured ``database_url``: ``sqlite:///path`` or
    ``postgresql://...`` (drivers chosen here), or, with none, ``cortex.db`` in the state dir."""
    if not url:
        folder = state_dir or default_state_dir()
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{folder / 'cortex.db'}"
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"database_url: only sqlite:/// and postgresql:// are supported, not {url!r}")


class Database:
    """The async engine and its migrations. ``open`` it once in the gateway's lifespan."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @classmethod
    def open(cls, url: str | None, state_dir: Path | None = None) -> Database:
        target = async_url(url, state_dir)
        if target.startswith("sqlite"):
            engine = create_async_engine(target, connect_args={"timeout": 30})
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = create_async_engine(target, pool_pre_ping=True, pool_size=10)
        return cls(engine)

    async def migrate(self, component: str, steps: Sequence[Migration]) -> None:
        """Brings ``component``'s tables to ``len(steps)``, one transaction per run."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_migrate, component, steps)

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL: readers do not block the writer; the wait on a locked file is set by
    # connect_args' timeout. NORMAL sync is durable across process crashes in WAL mode.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _migrate(conn: Connection, component: str, steps: Sequence[Migration]) -> None:
    if conn.dialect.name == "postgresql":
        # Two gateways starting together: the second waits here, then sees the version.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(component)})
    _VERSIONS.create(conn, checkfirst=True)
    row = conn.execute(
        sa.select(_VERSIONS.c.version).where(_VERSIONS.c.component == component)
    ).first()
    current = row[0] if row else 0
    if current > len(steps):
        raise RuntimeError(
            f"the database's {component} schema is version {current}, newer than this "
            f"gateway's {len(steps)}: upgrade cortex"
        )
    for version, step in enumerate(steps[current:], start=current + 1):
        step(conn)
        log.info("database: %s schema at version %d", component, version)
    if current == len(steps):
        return
    if row:
        conn.execute(
            _VERSIONS.update().where(_VERSIONS.c.component == component).values(version=len(steps))
        )
    else:
        conn.execute(_VERSIONS.insert().values(component=component, version=len(steps)))


def _lock_key(component: str) -> int:
    return zlib.crc32(f"cortex-schema:{component}".encode())
