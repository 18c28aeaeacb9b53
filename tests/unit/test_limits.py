"""Virtual keys' limits: model globs, fixed minute windows, parallel places and budgets,
decided without a database or a clock of their own."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cortex.errors import RateLimited
from cortex.gateway.keys import KeyRecord
from cortex.gateway.limits import Limiter, may_use, period_of

T0 = datetime(2026, 12, 5, 12, 0, 10, tzinfo=UTC).timestamp()  # 10 s into a minute


def key(**limits: object) -> KeyRecord:
    return KeyRecord(id="key_t", name="t", hash="h", prefix="ck-x", **limits)  # type: ignore[arg-type]


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, spent: int = 0, counter: object = None) -> Limiter:
    async def read_spent(key_id: str, since: str) -> int:
        return spent

    return Limiter(counter, read_spent, clock=clock)  # type: ignore[arg-type]


def test_model_globs() -> None:
    assert may_use((), "anything")
    assert may_use(("qwen*",), "qwen3-8b")
    assert not may_use(("qwen*",), "smollm2")
    # the name the client used counts too: an alias the operator named in the globs
    assert may_use(("claude-*",), "smollm2", "claude-haiku-4")
    assert not may_use(("Qwen*",), "qwen3")  # case matters, as model ids are compared


def test_periods_are_utc_days_and_months() -> None:
    assert period_of("day", T0) == ("2026-12-05", datetime(2026, 12, 6, tzinfo=UTC).timestamp())
    assert period_of("month", T0) == ("2026-12-01", datetime(2027, 1, 1, tzinfo=UTC).timestamp())


async def test_rpm_is_a_fixed_minute_window() -> None:
    clock = Clock()
    limits = limiter(clock)
    limited = key(rpm=2)
    for _ in range(2):
        (await limits.admit(limited))()
    with pytest.raises(RateLimited) as refused:
        await limits.admit(limited)
    assert refused.value.reason == "rpm"
    assert refused.value.message.startswith("rate limit: 2 requests per minute")
    assert refused.value.retry_after_s == pytest.approx(50)  # the rest of the minute
    clock.now += 50  # the next minute: a fresh window
    (await limits.admit(limited))()


async def test_rpm_from_a_shared_counter() -> None:
    asked: list[tuple[str, int, int]] = []

    async def take(key_id: str, minute: int, rpm: int) -> bool:
        asked.append((key_id, minute, rpm))
        return len(asked) == 1  # other gateways have taken the rest of the minute

    limits = limiter(Clock(), counter=take)
    (await limits.admit(key(rpm=5)))()
    with pytest.raises(RateLimited, match="5 requests per minute"):
        await limits.admit(key(rpm=5))
    assert asked == [("key_t", int(T0 // 60), 5)] * 2


async def test_parallel_places_are_given_back() -> None:
    limits = limiter(Clock())
    limited = key(max_parallel=2)
    first = await limits.admit(limited)
    await limits.admit(limited)
    with pytest.raises(RateLimited) as refused:
        await limits.admit(limited)
    assert refused.value.reason == "parallel"
    first()
    first()  # twice: still one place back
    await limits.admit(limited)
    with pytest.raises(RateLimited):
        await limits.admit(limited)


async def test_tpm_counts_recorded_tokens_and_refuses_before_the_start() -> None:
    clock = Clock()
    limits = limiter(clock)
    limited = key(tpm=100)
    (await limits.admit(limited))()
    limits.spend("key_t", 60)
    (await limits.admit(limited))()  # 60 < 100: admitted, and may take it over
    limits.spend("key_t", 60)
    with pytest.raises(RateLimited) as refused:
        await limits.admit(limited)
    assert refused.value.reason == "tpm" and "100 tokens per minute" in refused.value.message
    clock.now += 60
    (await limits.admit(limited))()


async def test_budget_spent_says_budget_and_renews_next_period() -> None:
    clock = Clock()
    limits = limiter(clock)
    limited = key(budget_tokens=50, budget_period="day")
    (await limits.admit(limited))()
    limits.spend("key_t", 50)
    clock.now += 120  # not a rate: minutes later it is still spent
    with pytest.raises(RateLimited) as refused:
        await limits.admit(limited)
    assert refused.value.reason == "budget" and refused.value.code == "insufficient_quota"
    assert "token budget of 50 per day spent" in refused.value.message
    midnight = datetime(2026, 12, 6, tzinfo=UTC).timestamp()
    assert refused.value.retry_after_s == pytest.approx(midnight - clock.now)
    clock.now = midnight + 1
    (await limits.admit(limited))()


async def test_budget_spent_elsewhere_is_read_from_the_database() -> None:
    limits = limiter(Clock(), spent=1000)  # other gateways spent it all
    with pytest.raises(RateLimited, match="budget"):
        await limits.admit(key(budget_tokens=1000, budget_period="month"))


async def test_no_limits_admit_everything() -> None:
    limits = limiter(Clock())
    for _ in range(100):
        await limits.admit(key())
