"""Per-target rate limits: messages per second, per minute and per day.

One `RateLimiter` serves every run of the process (the `TargetService` owns it),
so two runs sending through the same target share its budget. Per second and
per minute are sliding windows kept in memory: at most N admissions in any
window, admitted in order. Per day counts the messages handed to the server on
the current UTC calendar day; that count lives in the database (one small
`app_settings` row per target and day, taken with a conditional UPDATE), so it
survives restarts and is shared with other processes using the same database.

A caller either waits for its slot (short waits) or, when the slot is further
away than it is willing to wait, gets `RateLimitedError` with the time the
message may go: the executor then defers the run ("deferred until ...") rather
than failing it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from sqlalchemy import Integer, String, cast, delete, update
from sqlalchemy.exc import IntegrityError

from mailwright.domain.capabilities import RateLimits  # what a target's sender declares
from mailwright.errors import RateLimitedError
from mailwright.storage.db import Database
from mailwright.storage.tables import AppSettingRow, utcnow


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)


class DayCounter(Protocol):
    def take(self, *, key: str, day: date, limit: int) -> bool:
        """Count one message for `key` on `day` if fewer than `limit` were counted; False otherwise."""
        ...


class SlidingWindow:
    """At most `limit` admissions in any `seconds`-long window; admission times never go back."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        # Only the last `limit` admissions matter: the oldest of them decides the next slot.
        self._times: deque[float] = deque(maxlen=limit)

    def earliest(self, now: float) -> float:
        if not self._times:
            return now
        slot = max(now, self._times[-1])
        if len(self._times) == self.limit:
            slot = max(slot, self._times[0] + self.seconds)
        return slot

    def admit(self, at: float) -> None:
        self._times.append(at)


def next_midnight(moment: datetime) -> datetime:
    day = moment.astimezone(UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _describe(limit: int, unit: str) -> str:
    return f"{limit:,} message{'s' if limit != 1 else ''} per {unit}"


class RateLimiter:
    """Thread-safe: the executor calls it from the event loop, the day counter runs in threads."""

    def __init__(self, days: DayCounter, *, clock: Clock | None = None) -> None:
        self._days = days
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[RateLimits, list[SlidingWindow]]] = {}
        # (key, limit) -> the UTC day its per-day budget ran out: no database call until tomorrow.
        self._spent: dict[tuple[str, int], date] = {}

    def reserve(self, *, key: str, limits: RateLimits, target: str, max_wait: float) -> float:
        """Take a slot for one message; returns the seconds to wait before sending it.

        Raises `RateLimitedError` (and takes nothing) when the slot is more than
        `max_wait` seconds away, or when today's per-day budget is spent.
        """
        if not limits:
            return 0.0
        now = self._clock.monotonic()
        with self._lock:
            wait = self._slot(key, limits, now) - now
        if wait > max_wait:
            raise self._window_error(limits, target=target, wait=wait)
        if limits.per_day is not None:
            self._take_day(key=key, limit=limits.per_day, target=target)
        with self._lock:
            # Another caller may have taken the slot meanwhile: take the next one, even if a bit later.
            slot = self._slot(key, limits, now)
            for window in self._windows[key][1]:
                window.admit(slot)
        return max(0.0, slot - now)

    async def acquire(self, *, key: str, limits: RateLimits, target: str, max_wait: float) -> None:
        """`reserve`, then sleep until the slot; the per-day count is taken off the event loop."""
        if not limits:
            return
        if limits.per_day is None:
            wait = self.reserve(key=key, limits=limits, target=target, max_wait=max_wait)
        else:
            wait = await asyncio.to_thread(
                self.reserve, key=key, limits=limits, target=target, max_wait=max_wait
            )
        if wait > 0:
            await asyncio.sleep(wait)

    def _slot(self, key: str, limits: RateLimits, now: float) -> float:
        known = self._windows.get(key)
        if known is None or known[0] != limits:  # new target, or its limits were changed
            known = (limits, [SlidingWindow(limit, seconds) for limit, seconds in limits.windows()])
            self._windows[key] = known
        return max([now, *(window.earliest(now) for window in known[1])])

    def _take_day(self, *, key: str, limit: int, target: str) -> None:
        today = self._clock.now().astimezone(UTC).date()
        spent = (key, limit)
        if self._spent.get(spent) != today and self._days.take(key=key, day=today, limit=limit):
            return
        self._spent[spent] = today
        until = next_midnight(self._clock.now())
        reason = f"target {target!r} has sent its {_describe(limit, 'day')} today (UTC)"
        raise RateLimitedError(
            f"{reason}; deferred until {until:%Y-%m-%d %H:%M} UTC",
            reason=reason,
            until=until,
            target=target,
            hint=f"raise the limit with `mailwright targets update {target!r} --rate-per-day N` if the "
            "provider allows more",
        )

    def _window_error(self, limits: RateLimits, *, target: str, wait: float) -> RateLimitedError:
        until = self._clock.now() + timedelta(seconds=wait)
        which = [
            _describe(limit, "second" if seconds == 1.0 else "minute") for limit, seconds in limits.windows()
        ]
        reason = f"target {target!r} is at its rate limit ({' and '.join(which)})"
        return RateLimitedError(
            f"{reason}; deferred until {until:%Y-%m-%d %H:%M:%S} UTC",
            reason=reason,
            until=until,
            target=target,
        )


_DAY_PREFIX = "rate_per_day:"


class DatabaseDayCounter:
    """Per-day counts in `app_settings` rows keyed `rate_per_day:<target id>:<YYYY-MM-DD>`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def take(self, *, key: str, day: date, limit: int) -> bool:
        row_key = f"{_DAY_PREFIX}{key}:{day.isoformat()}"
        for _ in range(3):  # two processes may insert today's row at once: the loser updates
            try:
                return self._take(row_key, key=key, limit=limit)
            except IntegrityError:
                continue
        return False

    def _take(self, row_key: str, *, key: str, limit: int) -> bool:
        count = cast(AppSettingRow.value, Integer)
        with self._db.session() as session:
            # One conditional UPDATE: atomic across processes, never over the limit.
            taken = session.execute(
                update(AppSettingRow)
                .where(AppSettingRow.key == row_key, count < limit)
                .values(value=cast(count + 1, String), updated_at=utcnow())
            )
            if taken.rowcount:  # type: ignore[attr-defined]
                return True
            if session.get(AppSettingRow, row_key) is not None:
                return False
            # The first message of the day for this target: yesterday's row goes.
            session.execute(
                delete(AppSettingRow).where(
                    AppSettingRow.key.startswith(f"{_DAY_PREFIX}{key}:", autoescape=True),
                    AppSettingRow.key != row_key,
                )
            )
            session.add(AppSettingRow(key=row_key, value="1", updated_at=utcnow()))
            session.flush()
            return True

    def count(self, *, key: str, day: date) -> int:
        with self._db.session() as session:
            row = session.get(AppSettingRow, f"{_DAY_PREFIX}{key}:{day.isoformat()}")
            return int(row.value) if row is not None else 0


def limiter_for(db: Database, *, clock: Clock | None = None) -> RateLimiter:
    return RateLimiter(DatabaseDayCounter(db), clock=clock)


__all__ = [
    "Clock",
    "DatabaseDayCounter",
    "DayCounter",
    "RateLimiter",
    "RateLimits",
    "SlidingWindow",
    "limiter_for",
    "next_midnight",
]
