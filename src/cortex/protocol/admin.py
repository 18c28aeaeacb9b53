"""Wire types of the admin API: virtual keys (``/admin/keys``) and usage (``/admin/usage``).

Times are RFC 3339 strings on the wire (pydantic ``datetime``, always UTC). A key's
secret appears once, in ``KeyCreated``; every other answer shows its ``prefix`` only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Priority = Literal["high", "normal", "low"]
LIMIT_MAX = 2**62  # what a database's BIGINT holds, with room to add to it
BudgetPeriod = Literal["day", "month"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyLimits(_Strict):
    """What a key may use and how much. ``None`` (or an empty ``models``): no limit."""

    models: list[str] = Field(default_factory=list)  # globs over model ids and names
    rpm: int | None = Field(default=None, ge=1, le=LIMIT_MAX)
    tpm: int | None = Field(default=None, ge=1, le=LIMIT_MAX)
    max_parallel: int | None = Field(default=None, ge=1, le=LIMIT_MAX)
    budget_tokens: int | None = Field(default=None, ge=1, le=LIMIT_MAX)
    budget_period: BudgetPeriod | None = None
    priority: Priority = "normal"
    expires_at: datetime | None = None

    @field_validator("models")
    @classmethod
    def _globs(cls, globs: list[str]) -> list[str]:
        return [glob.strip() for glob in globs if glob.strip()]


class KeyCreate(KeyLimits):
    """``POST /admin/keys``. A budget needs its period (and the other way round)."""

    name: str = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _budget_has_a_period(self) -> KeyCreate:
        if (self.budget_tokens is None) != (self.budget_period is None):
            raise ValueError("budget_tokens and budget_period go together")
        return self


class KeyUpdate(_Strict):
    """``PATCH /admin/keys/{id}``: the fields sent replace the key's (``null`` clears a
    limit); those left out stay."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    models: list[str] | None = None
    rpm: int | None = Field(default=None, ge=1, le=LIMIT_MAX)
    tpm: int | None = Field(default=None, ge=1, le=LIMIT_MAX)
    max_parallel: int | None = Field(default=None, ge=1, le=LIMIT_MAX)
    budget_tokens: int | None = Field(default=None, ge=1, le=LIMIT_MAX)
    budget_period: BudgetPeriod | None = None
    priority: Priority | None = None
    expires_at: datetime | None = None

    @field_validator("models")
    @classmethod
    def _globs(cls, globs: list[str] | None) -> list[str] | None:
        return None if globs is None else [glob.strip() for glob in globs if glob.strip()]


class KeyView(KeyLimits):
    """A key as the admin API shows it: never its secret, nor its hash."""

    id: str
    name: str
    prefix: str  # the key's first characters, to recognise it
    created_at: datetime
    revoked_at: datetime | None = None


class KeyCreated(KeyView):
    key: str  # shown once: only its hash is stored


class KeyList(_Strict):
    keys: list[KeyView]


class UsageRow(_Strict):
    """One key's use of one model (over the days asked; per day with ``by=day``)."""

    key_id: str  # a virtual key's id; "static-<hash prefix>" for a cortex.toml key;
    # "anonymous" when no key was needed
    key_name: str | None = None
    model: str
    day: str | None = None  # YYYY-MM-DD (UTC), with by=day
    requests: int
    errors: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    duration_s: float


class UsageReport(_Strict):
    since: str | None = None  # the first day counted, YYYY-MM-DD (UTC)
    usage: list[UsageRow]
