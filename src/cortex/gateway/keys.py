"""Virtual keys: stored hashed in the gateway's database (component ``keys``), looked up
through a short-lived cache so a request does not wait on the database.

A key is ``ck-`` and 43 characters of ``secrets.token_urlsafe(32)`` (256 random bits). Only
its SHA-256 is stored. Not argon2 or bcrypt: those slow hashes exist to make guessing a
*low-entropy* password expensive; guessing a 256-bit random key is already hopeless, and
a slow hash would cost every request tens of milliseconds. The lookup is by hash (an
index), and the hash found is compared again with ``hmac.compare_digest``.

Revocation, expiry and limit changes reach every gateway sharing the database within
``CACHE_TTL_S`` (each cached lookup is re-read after that long).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cortex.errors import InvalidRequest
from cortex.gateway.database import Database
from cortex.protocol.admin import KeyCreate, KeyCreated, KeyUpdate, KeyView

KEY_PREFIX = "ck-"
PREFIX_SHOWN = 10  # "ck-" and 7 characters: enough to tell keys apart, useless to guess
CACHE_TTL_S = 2.0  # the bound on how long a revoked key may still be let in
_NEGATIVE_CACHE_MAX = 10_000  # unknown keys remembered, so guessing does not load the DB

_META = sa.MetaData()
KEYS = sa.Table(
    "cortex_keys",
    _META,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("models", sa.Text, nullable=False),  # JSON list of globs
    sa.Column("rpm", sa.BigInteger),
    sa.Column("tpm", sa.BigInteger),
    sa.Column("max_parallel", sa.BigInteger),
    sa.Column("budget_tokens", sa.BigInteger),
    sa.Column("budget_period", sa.String(8)),
    sa.Column("priority", sa.String(8), nullable=False),
    # epoch seconds: one portable type for SQLite and PostgreSQL
    sa.Column("expires_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)


def _create_keys(conn: Connection) -> None:
    KEYS.create(conn)


MIGRATIONS = [_create_keys]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """One stored key, as the request path uses it."""

    id: str
    name: str
    hash: str
    prefix: str
    models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_tokens: int | None = None
    budget_period: str | None = None
    priority: str = "normal"
    expires_at: float | None = None
    created_at: float = field(default_factory=time.time)
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def view(self) -> KeyView:
        return KeyView(
            id=self.id,
            name=self.name,
            prefix=self.prefix,
            models=list(self.models),
            rpm=self.rpm,
            tpm=self.tpm,
            max_parallel=self.max_parallel,
            budget_tokens=self.budget_tokens,
            budget_period=self.budget_period,  # type: ignore[arg-type]
            priority=self.priority,  # type: ignore[arg-type]
            expires_at=_datetime(self.expires_at),
            created_at=_datetime(self.created_at),  # type: ignore[arg-type]
            revoked_at=_datetime(self.revoked_at),
        )


def _datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # a date without a zone is taken as UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _record(row: Any) -> KeyRecord:
    values = dict(row._mapping)
    values["models"] = tuple(json.loads(values["models"]))
    return KeyRecord(**values)


class KeyStore:
    """The keys table, and a cache of lookups by hash (positive and negative)."""

    def __init__(self, database: Database, ttl_s: float = CACHE_TTL_S) -> None:
        self._db = database
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self.any_keys = False  # once a key exists, API routes need one (never unset)
        self._any_checked = 0.0

    async def migrate(self) -> None:
        await self._db.migrate("keys", MIGRATIONS)
        await self.refresh_any()

    async def refresh_any(self) -> bool:
        """Whether any key was ever created, here or by another gateway on the database."""
        if not self.any_keys:
            async with self._db.engine.connect() as conn:
                found = (await conn.execute(sa.select(KEYS.c.id).limit(1))).first()
            self.any_keys = found is not None
            self._any_checked = time.monotonic()
        return self.any_keys

    async def maybe_refresh_any(self) -> bool:
        """``any_keys``, re-read at most once per TTL while there are none."""
        if not self.any_keys and time.monotonic() - self._any_checked > self._ttl_s:
            await self.refresh_any()
        return self.any_keys

    async def lookup(self, key: str) -> KeyRecord | None:
        """The usable key whose secret is ``key``; ``None`` for an unknown, revoked or
        expired one. Served from the cache for up to ``ttl_s``."""
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self._ttl_s:
            found = cached[1]
        else:
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(sa.select(KEYS).where(KEYS.c.hash == digest))).first()
            found = _record(row) if row is not None else None
            if found is None and len(self._cache) >= _NEGATIVE_CACHE_MAX:
                self._cache.clear()  # bounded: a flood of guesses only costs queries
            self._cache[digest] = (now, found)
        if found is None or not hmac.compare_digest(found.hash, digest):
            return None
        self.any_keys = True
        return found if found.usable(time.time()) else None

    async def create(self, asked: KeyCreate) -> KeyCreated:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            id="key_" + uuid.uuid4().hex[:16],
            name=asked.name,
            hash=hash_key(key),
            prefix=key[:PREFIX_SHOWN],
            models=tuple(asked.models),
            rpm=asked.rpm,
            tpm=asked.tpm,
            max_parallel=asked.max_parallel,
            budget_tokens=asked.budget_tokens,
            budget_period=asked.budget_period,
            priority=asked.priority,
            expires_at=_epoch(asked.expires_at),
        )
        values = {**record.__dict__, "models": json.dumps(list(record.models))}
        async with self._db.engine.begin() as conn:
            await conn.execute(KEYS.insert().values(**values))
        self.any_keys = True
        return KeyCreated(**record.view().model_dump(), key=key)

    async def get(self, key_id: str) -> KeyRecord | None:
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(sa.select(KEYS).where(KEYS.c.id == key_id))).first()
        return _record(row) if row is not None else None

    async def all(self) -> list[KeyRecord]:
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(sa.select(KEYS).order_by(KEYS.c.created_at))).all()
        return [_record(row) for row in rows]

    async def names(self) -> dict[str, str]:
        """Every key's name by id (for usage reports)."""
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(sa.select(KEYS.c.id, KEYS.c.name))).all()
        return {row.id: row.name for row in rows}

    async def update(self, key_id: str, changes: KeyUpdate) -> KeyRecord | None:
        """The key with ``changes`` applied; ``None`` when there is no such key. A name or
        priority sent as ``null`` is ignored (neither can be cleared)."""
        values = {
            name: value
            for name, value in changes.model_dump(exclude_unset=True).items()
            if value is not None or name not in ("name", "priority")
        }
        current = await self.get(key_id)
        if current is None:
            return None
        if "budget_tokens" in values and values["budget_tokens"] is None:
            values.setdefault("budget_period", None)  # no budget: no period either
        budget = values.get("budget_tokens", current.budget_tokens)
        period = values.get("budget_period", current.budget_period)
        if (budget is None) != (period is None):
            raise InvalidRequest("budget_tokens and budget_period go together.", param="budget")
        if "models" in values:
            values["models"] = json.dumps(values["models"] or [])
        if "expires_at" in values:
            values["expires_at"] = _epoch(changes.expires_at)
        if values:
            async with self._db.engine.begin() as conn:
                await conn.execute(KEYS.update().where(KEYS.c.id == key_id).values(**values))
        self._forget(key_id)
        return await self.get(key_id)

    async def revoke(self, key_id: str) -> KeyRecord | None:
        async with self._db.engine.begin() as conn:
            await conn.execute(
                KEYS.update()
                .where(KEYS.c.id == key_id, KEYS.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        self._forget(key_id)
        return await self.get(key_id)

    def _forget(self, key_id: str) -> None:
        """This gateway sees its own changes at once; others within the TTL."""
        for digest, (_, found) in list(self._cache.items()):
            if found is not None and found.id == key_id:
                del self._cache[digest]
