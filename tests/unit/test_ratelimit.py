"""The rate limiter with an injected clock: windows, per-day budgets, deferral times. No sleeping."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pytest

from mailwright.errors import RateLimitedError
from mailwright.services.ratelimit import (
    RateLimiter,
    RateLimits,
    SlidingWindow,
    next_midnight,
)
from tests.support.clock import FakeClock

START = datetime(2026, 11, 24, 23, 59, 0, tzinfo=UTC)


@dataclass
class MemoryDays:
    counts: dict[tuple[str, date], int] = field(default_factory=dict)
    calls: int = 0

    def take(self, *, key: str, day: date, limit: int) -> bool:
        self.calls += 1
        if self.counts.get((key, day), 0) >= limit:
            return False
        self.counts[key, day] = self.counts.get((key, day), 0) + 1
        return True


def limiter() -> tuple[RateLimiter, FakeClock, MemoryDays]:
    clock, days = FakeClock(START), MemoryDays()
    return RateLimiter(days, clock=clock), clock, days


def reserve(rl: RateLimiter, limits: RateLimits, *, key: str = "t1", max_wait: float = 3600.0) -> float:
    return rl.reserve(key=key, limits=limits, target="Relay", max_wait=max_wait)


def test_no_limits_never_waits_nor_counts() -> None:
    rl, _, days = limiter()
    assert [reserve(rl, RateLimits()) for _ in range(1000)] == [0.0] * 1000
    assert days.calls == 0


def test_per_second_admits_n_then_spaces_by_the_window() -> None:
    rl, clock, _ = limiter()
    limits = RateLimits(per_second=3)
    waits = [reserve(rl, limits) for _ in range(7)]
    assert waits == [0, 0, 0, 1, 1, 1, 2]
    clock.advance(1.5)  # the window holds slots at +1, +1, +2: the next is at +2
    assert reserve(rl, limits) == pytest.approx(0.5)


def test_never_more_than_n_in_any_window() -> None:
    rl, clock, _ = limiter()
    limits = RateLimits(per_second=5, per_minute=12)
    admitted: list[float] = []
    for step in range(40):
        wait = reserve(rl, limits)
        admitted.append(clock.monotonic() + wait)
        clock.advance(0.05 * (step % 3))
    for i, start in enumerate(admitted):
        assert sum(start <= t < start + 1 for t in admitted[i:]) <= 5
        assert sum(start <= t < start + 60 for t in admitted[i:]) <= 12


def test_wait_longer_than_allowed_raises_and_takes_nothing() -> None:
    rl, clock, _ = limiter()
    limits = RateLimits(per_minute=2)
    assert reserve(rl, limits) == 0 and reserve(rl, limits) == 0
    with pytest.raises(RateLimitedError) as raised:
        reserve(rl, limits, max_wait=5)
    assert raised.value.until == START + timedelta(seconds=60)
    assert "2 messages per minute" in raised.value.message and "deferred until" in raised.value.message
    assert raised.value.transient
    clock.advance(60)
    assert reserve(rl, limits, max_wait=5) == 0  # the refused call took no slot


def test_per_day_budget_defers_until_midnight_utc() -> None:
    rl, clock, days = limiter()
    limits = RateLimits(per_day=3)
    for _ in range(3):
        assert reserve(rl, limits) == 0
    with pytest.raises(RateLimitedError) as raised:
        reserve(rl, limits)
    assert raised.value.until == datetime(2026, 11, 25, tzinfo=UTC)
    assert "3 messages per day" in raised.value.message
    calls = days.calls
    with pytest.raises(RateLimitedError):
        reserve(rl, limits)
    assert days.calls == calls  # spent for today: no database call until tomorrow
    clock.advance(61)  # 00:00:01 the next day
    assert reserve(rl, limits) == 0


def test_day_count_is_taken_only_when_the_window_allows() -> None:
    rl, _, days = limiter()
    limits = RateLimits(per_second=1, per_day=100)
    reserve(rl, limits)
    with pytest.raises(RateLimitedError):
        reserve(rl, limits, max_wait=0.5)
    assert sum(days.counts.values()) == 1


def test_targets_are_limited_separately_and_new_limits_apply_at_once() -> None:
    rl, _, _ = limiter()
    assert reserve(rl, RateLimits(per_second=1), key="a") == 0
    assert reserve(rl, RateLimits(per_second=1), key="b") == 0
    assert reserve(rl, RateLimits(per_second=1), key="a") == 1
    assert reserve(rl, RateLimits(per_second=100), key="a") == 0  # the target was edited


def test_sliding_window_times_never_go_back() -> None:
    window = SlidingWindow(2, 10.0)
    window.admit(5.0)
    assert window.earliest(1.0) == 5.0
    window.admit(5.0)
    assert window.earliest(6.0) == 15.0


def test_next_midnight() -> None:
    assert next_midnight(datetime(2026, 12, 31, 23, 0, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)


def test_limits_of_settings() -> None:
    class Settings:
        rate_per_second = None
        rate_per_minute = 30
        rate_per_day = 500

    limits = RateLimits.of(Settings())
    assert limits == RateLimits(per_minute=30, per_day=500) and bool(limits)
    assert not RateLimits.of(object())
