"""The Redis scripts of the shared limits, case by case, against a real Redis (one key prefix per test).

Times come from Redis (`TIME`), so the checks read the admission times the script stored
rather than trusting this process's clock.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest
import redis

from mailwright.domain.capabilities import RateLimits
from mailwright.errors import ConfigError, RateLimitedError
from mailwright.services.shared_limits import GUARD, SharedRateLimiter, windows_of
from mailwright.transport.redis_limits import (
    Outcome,
    RateWindows,
    RedisConnectionSlots,
    RedisLink,
    RedisUnavailableError,
    Window,
    describe_url,
    quick_retry,
)
from tests.support.redis_server import SHARED_URL, RedisServer, answers, settled, unique_prefix


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if answers(SHARED_URL):
        yield SHARED_URL
        return
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def link(redis_url: str) -> Iterator[RedisLink]:
    made = RedisLink.connect(redis_url, prefix=unique_prefix())
    settled(made)
    yield made
    keys = list(made.client.scan_iter(match=f"{made.prefix}*"))
    if keys:
        made.client.delete(*keys)
    made.close()


def admissions(link: RedisLink, windows: RateWindows, window: Window, key: str = "t1") -> list[float]:
    scored: list[tuple[bytes, float]] = link.client.zrange(windows.key(key, window), 0, -1, withscores=True)  # type: ignore[assignment]
    return [score / 1e6 for _, score in scored]


def most_in_any_window(times: list[float], length: float) -> int:
    ordered, most, first = sorted(times), 0, 0
    for last, moment in enumerate(ordered):
        while moment - ordered[first] >= length - 1e-6:
            first += 1
        most = max(most, last - first + 1)
    return most


# --- the rate windows ------------------------------------------------------------------


def take_soon(windows: RateWindows, limits: list[Window], *, key: str = "t1", within: float = 5.0) -> bool:
    """Take a slot as `acquire` does: beyond the horizon, sleep and ask again; False past `within`."""
    while True:
        taken = windows.take(key, limits, max_wait=3600)
        if taken.outcome is Outcome.TAKEN:
            return True
        if taken.wait > within:
            return False
        time.sleep(taken.wait - windows.horizon)


def test_a_window_admits_its_limit_at_once_then_waits_a_full_window(link: RedisLink) -> None:
    windows = RateWindows(link, horizon=3600)
    minute = Window(limit=3, seconds=60.0, name="minute")
    waits = [windows.take("t1", [minute], max_wait=3600).wait for _ in range(5)]
    assert waits[:3] == pytest.approx([0, 0, 0], abs=0.05)
    assert waits[3] == pytest.approx(60.0, abs=0.1) and waits[4] == pytest.approx(60.0, abs=0.1)
    assert most_in_any_window(admissions(link, windows, minute), 60.0) == 3


def test_spacing_spreads_admissions_evenly(link: RedisLink) -> None:
    windows = RateWindows(link)
    (second,) = windows_of(RateLimits(per_second=5))
    assert second.spacing == pytest.approx((1 + GUARD) / 5) and second.seconds == pytest.approx(1 + GUARD)
    assert all(take_soon(windows, [second]) for _ in range(11))
    times = admissions(link, windows, second)
    assert len(times) == 5  # the log keeps the last `limit` admissions
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= second.spacing - 1e-6
    assert most_in_any_window(times, 1.0 + GUARD) <= 5


def test_beyond_max_wait_nothing_is_taken(link: RedisLink) -> None:
    windows = RateWindows(link)
    minute = Window(limit=2, seconds=60.0, name="minute")
    assert windows.take("t1", [minute], max_wait=1).taken
    assert windows.take("t1", [minute], max_wait=1).taken
    refused = windows.take("t1", [minute], max_wait=1)
    assert not refused.taken and refused.wait == pytest.approx(60.0, abs=0.1)
    assert link.client.zcard(windows.key("t1", minute)) == 2
    later = windows.take("t1", [minute], max_wait=61)  # a caller that may wait: beyond the horizon
    assert later.outcome is Outcome.LATER and later.wait == pytest.approx(60.0, abs=0.1)
    assert link.client.zcard(windows.key("t1", minute)) == 2
    assert RateWindows(link, horizon=3600).take("t1", [minute], max_wait=61).taken


def test_both_windows_hold_and_one_refusal_takes_from_neither(link: RedisLink) -> None:
    windows = RateWindows(link)
    limits = windows_of(RateLimits(per_second=10, per_minute=4))
    taken = [windows.take("t1", limits, max_wait=0.5) for _ in range(6)]
    assert [t.taken for t in taken] == [True, True, True, True, False, False]
    for window in limits:
        assert link.client.zcard(windows.key("t1", window)) == 4


def test_targets_are_separate_and_a_lowered_limit_applies_at_once(link: RedisLink) -> None:
    windows = RateWindows(link, horizon=3600)
    wide, narrow = Window(limit=5, seconds=60.0, name="minute"), Window(limit=2, seconds=60.0, name="minute")
    for _ in range(3):
        assert windows.take("t1", [wide], max_wait=0).taken
    assert windows.take("t2", [wide], max_wait=0).taken  # another target: its own budget
    assert not windows.take("t1", [narrow], max_wait=1).taken  # 3 kept, the limit is now 2
    assert link.client.zcard(windows.key("t1", narrow)) == 3
    assert windows.take("t1", [narrow], max_wait=61).taken
    assert link.client.zcard(windows.key("t1", narrow)) == 2  # trimmed to the new limit


def test_keys_expire_and_the_script_is_reloaded_after_a_flush(link: RedisLink) -> None:
    windows = RateWindows(link)
    (second,) = windows_of(RateLimits(per_second=2))
    windows.take("t1", [second], max_wait=10)
    ttl = link.client.pttl(windows.key("t1", second))
    assert 0 < ttl <= (1 + GUARD) * 1000 + 1000
    link.client.script_flush()  # as after a Redis restart: NOSCRIPT, then loaded again
    assert windows.take("t1", [second], max_wait=10).taken


def test_a_redis_that_lost_its_keys_admits_nothing_until_earlier_slots_are_past(link: RedisLink) -> None:
    windows = RateWindows(link)
    (second,) = windows_of(RateLimits(per_second=20))
    assert windows.take("t1", [second], max_wait=10).taken
    link.client.delete(*link.client.keys(f"{link.prefix}*"))  # restarted empty
    first = windows.take("t1", [second], max_wait=10)
    assert first.outcome is Outcome.LATER and first.wait == pytest.approx(windows.pause, abs=0.1)
    assert windows.pause >= windows.horizon + 1 + GUARD  # every slot handed out before is a window past
    assert link.client.exists(f"{link.prefix}rate:epoch")


def test_give_back_returns_the_slot(link: RedisLink) -> None:
    windows = RateWindows(link)
    minute = Window(limit=1, seconds=60.0, name="minute")
    taken = windows.take("t1", [minute], max_wait=0)
    windows.give_back("t1", [minute], taken.token)
    assert windows.take("t1", [minute], max_wait=0).taken


def test_concurrent_takes_from_threads_never_exceed_the_window(link: RedisLink) -> None:
    windows = RateWindows(link)
    limits = windows_of(RateLimits(per_second=20, per_minute=30))

    def take_some() -> None:
        for _ in range(8):
            take_soon(windows, limits)
            time.sleep(random.uniform(0, 0.002))

    async def main() -> None:
        await asyncio.gather(*(asyncio.to_thread(take_some) for _ in range(6)))

    asyncio.run(main())
    second, minute = limits
    assert most_in_any_window(admissions(link, windows, second), 1.0 + GUARD) <= 20
    assert link.client.zcard(windows.key("t1", minute)) == 30  # 48 asked: 30 in the minute


# --- the limiter on top: per day in the database, Redis lost ---------------------------


@dataclass
class MemoryDays:
    limit_reached: bool = False
    calls: list[date] = field(default_factory=list)

    def take(self, *, key: str, day: date, limit: int) -> bool:
        self.calls.append(day)
        return not self.limit_reached


def test_a_spent_day_defers_and_gives_the_window_slot_back(link: RedisLink) -> None:
    windows = RateWindows(link)
    days = MemoryDays(limit_reached=True)
    limiter = SharedRateLimiter(days, windows)
    limits = RateLimits(per_minute=1, per_day=10)
    with pytest.raises(RateLimitedError) as spent:
        limiter.reserve(key="t1", limits=limits, target="Relay", max_wait=5)
    assert "10 messages per day" in spent.value.message and spent.value.until is not None
    (minute,) = windows_of(limits)
    assert link.client.zcard(windows.key("t1", minute)) == 0
    days.limit_reached = False  # (another process sees the count afresh; this one remembers it spent)
    limiter = SharedRateLimiter(days, windows)
    assert limiter.reserve(key="t1", limits=limits, target="Relay", max_wait=5) == 0.0
    with pytest.raises(RateLimitedError) as window:
        limiter.reserve(key="t1", limits=limits, target="Relay", max_wait=5)
    assert "1 message per minute" in window.value.message and "deferred until" in window.value.message


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_redis_lost_defers_the_message_and_never_fails_it() -> None:
    client = redis.Redis(
        host="127.0.0.1",
        port=_dead_port(),
        socket_connect_timeout=0.2,
        socket_timeout=0.2,
        retry=quick_retry(),
    )
    link = RedisLink(client, prefix=unique_prefix(), where="redis://127.0.0.1:1/0")
    limiter = SharedRateLimiter(MemoryDays(), RateWindows(link))
    with pytest.raises(RedisUnavailableError):
        limiter.reserve(key="t1", limits=RateLimits(per_second=1), target="Relay", max_wait=5)
    started = time.monotonic()
    with pytest.raises(RateLimitedError) as deferred:
        asyncio.run(limiter.acquire(key="t1", limits=RateLimits(per_second=1), target="Relay", max_wait=1.0))
    assert time.monotonic() - started < 3.0  # waited (with backoff) about max_wait, then deferred
    assert "does not answer" in deferred.value.message and "deferred until" in deferred.value.message


# --- the connection cap ----------------------------------------------------------------


def test_the_cap_waits_and_a_release_lets_the_next_in(link: RedisLink) -> None:
    slots = RedisConnectionSlots(link)

    async def main() -> None:
        first = await slots.acquire(key="t1", limit=2)
        await slots.acquire(key="t1", limit=2)
        third = asyncio.create_task(slots.acquire(key="t1", limit=2))
        await asyncio.sleep(0.5)
        assert not third.done()  # at the cap it waits, it does not fail
        first.release()
        first.release()  # idempotent
        await asyncio.wait_for(third, 10)
        assert link.client.zcard(slots.key("t1")) == 2
        assert await asyncio.wait_for(slots.acquire(key="t2", limit=1), 5)  # another target

    asyncio.run(main())
    slots.close()


def test_a_killed_holders_slot_comes_back_after_its_ttl_and_refresh_keeps_a_live_one(link: RedisLink) -> None:
    dead = RedisConnectionSlots(link, ttl=0.6, refresh=3600)  # never refreshes: a SIGKILLed worker
    live = RedisConnectionSlots(link, ttl=0.6, refresh=0.1)

    async def main() -> None:
        await dead.acquire(key="t1", limit=2)
        await live.acquire(key="t1", limit=2)
        started = time.monotonic()
        await asyncio.wait_for(live.acquire(key="t1", limit=2), 10)  # the dead one's slot, once expired
        assert 0.3 < time.monotonic() - started < 5
        await asyncio.sleep(1.5)  # well past the TTL: the live holder refreshed its two
        assert link.client.zcard(live.key("t1")) == 2
        late = asyncio.create_task(live.acquire(key="t1", limit=2))
        await asyncio.sleep(0.5)
        assert not late.done()
        late.cancel()

    asyncio.run(main())
    dead.close()
    live.close()


def test_after_redis_lost_its_keys_no_connection_slot_until_holders_are_back(link: RedisLink) -> None:
    slots = RedisConnectionSlots(link, pause=0.6)
    link.client.delete(f"{link.prefix}conn:epoch")  # restarted empty

    async def main() -> float:
        started = time.monotonic()
        await asyncio.wait_for(slots.acquire(key="t1", limit=2), 10)
        return time.monotonic() - started

    assert 0.5 < asyncio.run(main()) < 5
    slots.close()


def test_slots_held_are_re_added_when_redis_loses_them(link: RedisLink) -> None:
    slots = RedisConnectionSlots(link, ttl=5, refresh=3600)

    async def main() -> None:
        await slots.acquire(key="t1", limit=3)
        await slots.acquire(key="t1", limit=3)

    asyncio.run(main())
    link.client.delete(slots.key("t1"))  # Redis restarted empty
    assert slots.refresh_now()
    assert link.client.zcard(slots.key("t1")) == 2 and slots.held() == {slots.key("t1"): 2}
    slots.close()


# --- the URL and the start ---------------------------------------------------------------


def test_a_bad_url_or_an_unreachable_redis_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as bad:
        RedisLink.connect("http://:hunter2@127.0.0.1:6379/0")
    assert "MAILWRIGHT_REDIS_URL" in str(bad.value) and "hunter2" not in str(bad.value)
    with pytest.raises(ConfigError) as away:
        RedisLink.connect(f"redis://:hunter2@127.0.0.1:{_dead_port()}/0")
    text = str(away.value)
    assert "MAILWRIGHT_REDIS_URL" in text and "cannot reach Redis" in text and "hunter2" not in text
    assert "unset" in text  # how to fix it, or go back to per-process limits
    assert describe_url("redis://user:hunter2@cache:6380/2") == "redis://cache:6380/2"


def test_services_choose_the_limiter_from_the_setting(tmp_path: Path, redis_url: str) -> None:
    from mailwright.config import Settings
    from mailwright.services.app import Services
    from mailwright.services.ratelimit import RateLimiter
    from mailwright.transport.pool import shared_pools

    plain = Services(Settings(home=tmp_path / "a"))
    assert type(plain.targets.rate_limits) is RateLimiter
    assert shared_pools()._slots is None
    plain.close()
    shared = Services(Settings(home=tmp_path / "b", redis_url=redis_url))
    assert isinstance(shared.targets.rate_limits, SharedRateLimiter)
    assert isinstance(shared_pools()._slots, RedisConnectionSlots)
    shared.close()
    shared_pools().set_connection_slots(None)
    with pytest.raises(ConfigError) as away:
        _ = Services(Settings(home=tmp_path / "c", redis_url=f"redis://127.0.0.1:{_dead_port()}/0")).targets
    assert "MAILWRIGHT_REDIS_URL" in str(away.value)


def test_a_message_that_wakes_late_takes_a_new_slot_and_gives_the_old_back(link: RedisLink) -> None:
    """The event loop held up past a message's slot: sent on it, the message would reach the
    server bunched with the ones slotted after it. It gives that slot back and takes a new one;
    its day is counted once."""
    windows = RateWindows(link)
    days = MemoryDays()
    limiter = SharedRateLimiter(days, windows)
    limits = RateLimits(per_second=10, per_day=1000)
    (second,) = windows_of(limits)

    async def two_messages_the_second_held_up() -> None:
        await limiter.acquire(key="t1", limits=limits, target="Relay", max_wait=5)
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, time.sleep, 0.4)  # a synchronous call blocks the loop past the slot
        await limiter.acquire(key="t1", limits=limits, target="Relay", max_wait=5)

    asyncio.run(two_messages_the_second_held_up())
    first, then = admissions(link, windows, second)  # two slots kept, not three
    assert then - first >= 0.4, (first, then)  # the second slot was taken after the hold-up
    assert len(days.calls) == 2


def test_a_message_on_time_keeps_its_slot(link: RedisLink) -> None:
    windows = RateWindows(link)
    limiter = SharedRateLimiter(MemoryDays(), windows)
    limits = RateLimits(per_second=10)
    (second,) = windows_of(limits)

    async def three_messages() -> None:
        for _ in range(3):
            await limiter.acquire(key="t1", limits=limits, target="Relay", max_wait=5)

    asyncio.run(three_messages())
    slots = admissions(link, windows, second)
    assert len(slots) == 3
    assert all(b - a == pytest.approx(second.spacing, abs=0.01) for a, b in itertools.pairwise(slots))
