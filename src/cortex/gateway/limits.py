"""A virtual key's limits: which models, requests and tokens per minute, requests at
once, and a token budget per day or month.

Windows are fixed, per UTC minute (``floor(epoch / 60)``): a key may send up to ``rpm``
requests in each calendar minute, so a burst of up to twice that can straddle a minute's
end; ``Retry-After`` is the time left in the minute. Fixed windows make the count across
gateways one integer per (key, minute), which PostgreSQL can add to atomically.

- rpm: counted when a request is admitted. With PostgreSQL the count is one upserted row
  per (key, minute) shared by every gateway, which each gateway takes from in leases
  (``counters.MinuteCounter``); with SQLite, in this process.
- tpm: input + output tokens of the requests that *ended* in this minute, counted as they
  are recorded; a request is refused before it starts once the minute's tokens reach
  ``tpm`` (a request under way may take it past: its size is not known in advance).
- max_parallel: requests of the key in flight on this gateway, released when the response
  ends, a cancelled stream included.
- budget: input + output tokens since the start of the UTC day or month; the spent total
  is this gateway's own count, or the database's (all gateways, flushed every second and
  re-read every ``CACHE_TTL_S``) when that is larger.

tpm, max_parallel and the budget are held per gateway (with the budget re-read from the
shared usage): only rpm is exact across gateways.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cortex.errors import RateLimited
from cortex.gateway.keys import CACHE_TTL_S, KeyRecord

# (key id, minute, rpm) -> whether one more request fits the minute, across gateways
TakeRequest = Callable[[str, int, int], Awaitable[bool]]
# (key id, first day "YYYY-MM-DD") -> input + output tokens since then, all gateways
ReadSpent = Callable[[str, str], Awaitable[int]]


def may_use(globs: tuple[str, ...], *names: str) -> bool:
    """Whether a key limited to ``globs`` may use the model known by ``names`` (its id,
    and the name the client asked for, which may be an alias). No globs: every model."""
    if not globs:
        return True
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs for name in names if name)


def period_of(budget_period: str | None, now: float) -> tuple[str, float]:
    """The budget period containing ``now``: its first day ("YYYY-MM-DD") and the epoch
    time it ends."""
    moment = datetime.fromtimestamp(now, UTC)
    if budget_period == "month":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    return start.strftime("%Y-%m-%d"), end.timestamp()


@dataclass
class KeyWindow:
    """One key's counters on this gateway."""

    in_flight: int = 0
    minute: int = -1
    requests: int = 0  # admitted in ``minute`` (SQLite: the whole count)
    tokens: int = 0  # recorded in ``minute``
    period: str = ""  # the budget period ``spent`` is for
    spent: int = 0
    spent_read_at: float = 0.0  # monotonic; the database's total re-read after CACHE_TTL_S

    def roll(self, minute: int, period: str) -> None:
        if minute != self.minute:
            self.minute, self.requests, self.tokens = minute, 0, 0
        if period != self.period:
            self.period, self.spent, self.spent_read_at = period, 0, 0.0


def refusal(key: KeyRecord, window: KeyWindow, now: float) -> RateLimited | None:
    """Why ``key`` may not start a request now (budget, tpm, parallel), or ``None``.
    rpm is decided apart, as its count may live in the database."""
    if key.budget_tokens is not None and window.spent >= key.budget_tokens:
        _, ends = period_of(key.budget_period, now)
        return RateLimited(
            f"token budget of {key.budget_tokens} per {key.budget_period or 'day'} spent "
            f"(key {key.id}); it renews at the start of the next UTC {key.budget_period}.",
            reason="budget",
            retry_after_s=max(1.0, ends - now),
        )
    if key.tpm is not None and window.tokens >= key.tpm:
        return RateLimited(
            f"rate limit: {key.tpm} tokens per minute (key {key.id}).",
            reason="tpm",
            retry_after_s=_rest_of_minute(now),
        )
    if key.max_parallel is not None and window.in_flight >= key.max_parallel:
        return RateLimited(
            f"rate limit: {key.max_parallel} requests at once (key {key.id}).",
            reason="parallel",
            retry_after_s=1.0,
        )
    return None


def rpm_refusal(key: KeyRecord, now: float) -> RateLimited:
    return RateLimited(
        f"rate limit: {key.rpm} requests per minute (key {key.id}).",
        reason="rpm",
        retry_after_s=_rest_of_minute(now),
    )


def _rest_of_minute(now: float) -> float:
    return max(1.0, 60.0 - now % 60.0)


class Limiter:
    """Admits a key's requests against its limits; owns every key's ``KeyWindow``.

    ``take_request``: the shared per-minute counter (PostgreSQL), or ``None`` to count
    in this process. ``read_spent``: the budget spent so far, from the usage table."""

    def __init__(
        self,
        take_request: TakeRequest | None,
        read_spent: ReadSpent,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._take_request = take_request
        self._read_spent = read_spent
        self._clock = clock
        self._windows: dict[str, KeyWindow] = {}

    def window(self, key_id: str) -> KeyWindow:
        window = self._windows.get(key_id)
        if window is None:
            window = self._windows[key_id] = KeyWindow()
        return window

    async def admit(self, key: KeyRecord) -> Callable[[], None]:
        """Takes a place for one request of ``key``, or raises ``RateLimited``; returns
        what gives the place back (call it once, when the response has ended)."""
        now = self._clock()
        window = self.window(key.id)
        period, _ = period_of(key.budget_period, now)
        window.roll(int(now // 60), period)
        if key.budget_tokens is not None:
            await self._refresh_spent(key.id, window)
        refused = refusal(key, window, now)
        if refused is None and key.rpm is not None:
            if self._take_request is not None:
                fits = await self._take_request(key.id, window.minute, key.rpm)
            else:
                fits = window.requests < key.rpm
            refused = None if fits else rpm_refusal(key, now)
        if refused is not None:
            raise refused
        window.requests += 1
        window.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                window.in_flight -= 1

        return release

    def spend(self, key_id: str, tokens: int) -> None:
        """Tokens a request of ``key_id`` used, as its record is written."""
        window = self._windows.get(key_id)
        if window is None or tokens <= 0:
            return
        now = self._clock()
        if int(now // 60) == window.minute:
            window.tokens += tokens
        else:  # the first tokens of a new minute: the window rolls here
            window.minute, window.requests, window.tokens = int(now // 60), 0, tokens
        window.spent += tokens

    async def _refresh_spent(self, key_id: str, window: KeyWindow) -> None:
        if time.monotonic() - window.spent_read_at < CACHE_TTL_S:
            return
        window.spent_read_at = time.monotonic()
        window.spent = max(window.spent, await self._read_spent(key_id, window.period))
