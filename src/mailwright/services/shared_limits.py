"""Rate limits and connection caps shared by every worker, through Redis (MAILWRIGHT_REDIS_URL).

Without MAILWRIGHT_REDIS_URL each process keeps its own windows (`ratelimit.RateLimiter`)
and its own connection count: N workers may together send N times a target's rate.
With it, `SharedRateLimiter` takes every slot from Redis in one atomic script, and the
SMTP pools take a slot of the target's connection cap from Redis before connecting
(`transport.redis_limits`). The per-day budget is counted in the database, as before,
which every worker shares already.

The windows (the guarantee, and why this shape)
-----------------------------------------------
Each window is a sliding-window log: the admission times of the last N messages, in
a sorted set per target and window. A message is admitted at the first moment that
keeps at most N admissions in any interval of the window's length, never before the
newest admission (slots are handed out in order). That is exact, not an approximation
like fixed buckets, and it is what the per-process limiter promises.

The guarantee the user cares about is at the server: "at most N messages arrive in
any one-second window". A message arrives some time after its slot (a wake-up, the
pool, a round trip), and that time varies; two admissions a full window apart can
arrive less than a window apart. So each window is enforced over its length plus a
`guard` (0.1 s): arrivals keep the guarantee while the delay from slot to arrival
varies by less than the guard. The per-second window is also *spaced*: admissions at
least (1 s + guard) / N apart, a GCRA with a burst of one (the only burst for which
GCRA keeps "N in any window"). A burst of N admitted at once would reach the server as
a queue drained over a few connections, its drain time counted against the guard;
spaced, only each message's own jitter is. The per-minute window is not spaced: a
target limited per minute (and not per second) still sends its first messages at
once, as without Redis. The price: N per second becomes N per 1.1 s (20/s: 18.2/s).

Three things would make a message late by more than the guard, and are bounded here:
- this process held up past the slot (a busy CPU, a long synchronous call in the event
  loop): a message that wakes more than `LATE` (guard / 2) after its slot gives it back
  and takes a new one, so it never goes out on a slot it missed;
- waiting for a connection after its slot (the target's pool at its cap over all
  workers): a slot is taken only when this process's pool can send at once (a live
  connection with room, `ROOM_PER_CONNECTION` each); with none, one message at a time
  takes a slot and opens one. So at most one late message per worker left without a
  connection, which can add that one message to a window;
- a Redis restarted empty: it forgets the slots handed out, so slots are handed out
  at most `HORIZON` (1 s) ahead (a caller further back asks again later), and after the
  loss nothing is admitted for `HORIZON` + 1.5 s: the old slots are past when new ones
  start. The per-minute log is lost with it (a per-minute limit may be exceeded once,
  in the minute of the restart); run Redis with `appendonly yes` to keep it.

Redis lost mid-run: a take is retried with backoff (0.1 s doubling to 5 s); a caller
that may wait (a batch: 120 s, a workflow step: 5 s) waits; past its `max_wait` it gets
`RateLimitedError` with a time to come back, so the executor defers the run; no message
fails. The warning names Redis's host and port, never the URL's password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import timedelta

from mailwright.domain.capabilities import RateLimits
from mailwright.errors import RateLimitedError
from mailwright.services.ratelimit import Clock, DatabaseDayCounter, DayCounter, RateLimiter, SystemClock
from mailwright.storage.db import Database
from mailwright.transport.pool import shared_pools
from mailwright.transport.redis_limits import (
    Outcome,
    RateWindows,
    RedisConnectionSlots,
    RedisLink,
    RedisUnavailableError,
    Taken,
    Window,
    backoff,
)

GUARD = 0.1  # seconds added to each window: the slot-to-arrival jitter the guarantee absorbs
log = logging.getLogger(__name__)

WINDOW_NAMES = {1.0: "second", 60.0: "minute"}
ROOM_PER_CONNECTION = 4  # messages with a slot, not yet on a connection, per live connection
ROOM_POLL = 0.02
COLD_GRACE = 2.0
LATE = GUARD / 2  # seconds past its slot after which a message takes a new one (see `acquire`)
MAX_RETAKES = 3  # then it goes on the last slot it took: a machine late every time must still send


def windows_of(limits: RateLimits, *, guard: float = GUARD) -> list[Window]:
    """The Redis windows of a target's limits: per second spaced, per minute not (see the module doc)."""
    out: list[Window] = []
    for limit, seconds in limits.windows():
        length = seconds + guard
        spacing = length / limit if seconds == 1.0 else 0.0
        out.append(Window(limit=limit, seconds=length, spacing=spacing, name=WINDOW_NAMES.get(seconds, "")))
    return out


class SlotLater(Exception):
    """The slot is beyond the horizon: nothing was taken; ask again in `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"ask again in {seconds:.3f} s")
        self.seconds = max(0.0, seconds)


class SharedRateLimiter(RateLimiter):
    """`RateLimiter` with its windows in Redis, shared by every worker; per day stays in the database."""

    def __init__(
        self, days: DayCounter, windows: RateWindows, *, clock: Clock | None = None, guard: float = GUARD
    ) -> None:
        super().__init__(days, clock=clock)
        self._redis = windows
        self._guard = guard
        # (id of the event loop, target) -> messages holding a slot they are sleeping until.
        self._sleeping: dict[tuple[int, str], int] = {}
        # (id of the event loop, target) -> when a message last took a slot with no connection open.
        self._cold: dict[tuple[int, str], float] = {}

    def reserve(self, *, key: str, limits: RateLimits, target: str, max_wait: float) -> float:
        """Take a slot for one message; returns the seconds to wait before sending it.

        Raises `RateLimitedError` (and takes nothing) when the slot is more than
        `max_wait` seconds away or today's budget is spent; `SlotLater` when it is
        further than the horizon (ask again then); `RedisUnavailableError` when Redis
        does not answer. `acquire` handles the last two.
        """
        return self._reserve(key=key, limits=limits, target=target, max_wait=max_wait, day=True).wait

    def _reserve(self, *, key: str, limits: RateLimits, target: str, max_wait: float, day: bool) -> Taken:
        """`reserve`, with the slot's token (to give it back); `day=False` when the day's count was taken."""
        if not limits:
            return Taken(outcome=Outcome.TAKEN, wait=0.0, token="")
        windows = windows_of(limits, guard=self._guard)
        if not windows:  # per day only
            if day:
                self._take_day(key=key, limit=limits.per_day or 0, target=target)
            return Taken(outcome=Outcome.TAKEN, wait=0.0, token="")
        taken = self._redis.take(key, windows, max_wait=max_wait)
        if taken.outcome is Outcome.REFUSED:
            raise self._window_error(limits, target=target, wait=taken.wait)
        if taken.outcome is Outcome.LATER:
            raise SlotLater(taken.wait - self._redis.horizon)
        if day and limits.per_day is not None:
            try:
                self._take_day(key=key, limit=limits.per_day, target=target)
            except RateLimitedError:
                self._redis.give_back(key, windows, taken.token)  # the message will not go: nor its slot
                raise
        return taken

    async def acquire(self, *, key: str, limits: RateLimits, target: str, max_wait: float) -> None:
        """`reserve` off the event loop, then sleep until the slot; a lost Redis is waited for.

        Waiting for Redis counts against `max_wait`: past it the message is deferred
        (`RateLimitedError` with a time to try again), never failed.

        A message that wakes more than `LATE` after its slot (this event loop was held up:
        a busy CPU, a long synchronous call) gives the slot back and takes a new one: sent
        late on its old slot it would reach the server bunched with the messages slotted
        after it, and the server could see more than N in a second. At most `MAX_RETAKES`
        times: a worker that is late every time still sends.
        """
        if not limits:
            return
        deadline = time.monotonic() + max_wait  # waiting for Redis, room and the slot together
        missed: str | None = None  # the slot this message woke too late for
        for retake in range(MAX_RETAKES + 1):
            at, taken = await self._next_slot(
                key=key, limits=limits, target=target, deadline=deadline, max_wait=max_wait, missed=missed
            )
            await self._sleep_until(key, taken.wait)
            late = time.monotonic() - (at + taken.wait)
            if not taken.token or late <= LATE or retake == MAX_RETAKES:
                return
            log.debug("target %r: woke %.0f ms after its rate slot; taking a new one", target, late * 1000)
            missed = taken.token

    async def _next_slot(
        self,
        *,
        key: str,
        limits: RateLimits,
        target: str,
        deadline: float,
        max_wait: float,
        missed: str | None,
    ) -> tuple[float, Taken]:
        """The next slot, and when (this clock) Redis was asked, once there is room and Redis answers.

        `missed`: the token of the slot this message woke too late for. It is given back in the
        same thread call, the day is not counted again, and no room is waited for: the message
        had room already, and the others it would wait for are the ones it must not fall behind.
        """
        attempt = 0
        while True:
            if missed is None and not await self._room_by(key, deadline):
                raise self._no_connection(target=target, retry=max(5.0, max_wait))
            left = max(0.0, deadline - time.monotonic())
            try:
                return await asyncio.to_thread(
                    self._reserve_timed, key=key, limits=limits, target=target, max_wait=left, missed=missed
                )
            except SlotLater as later:
                attempt = 0
                await asyncio.sleep(later.seconds + random.uniform(0.0, 0.05))
            except RedisUnavailableError as exc:
                pause = backoff(attempt)
                attempt += 1
                if time.monotonic() + pause > deadline:
                    raise self._unavailable(target=target, error=exc, retry=max(pause, 5.0)) from exc
                await asyncio.sleep(pause)

    def _reserve_timed(
        self, *, key: str, limits: RateLimits, target: str, max_wait: float, missed: str | None
    ) -> tuple[float, Taken]:
        """`_reserve` in a worker thread, with the time just before Redis's clock read the slot.

        Timed here, not before the thread hop: a busy thread pool delays the hop, and counting
        that delay as lateness would make every message of a busy worker miss its slot.
        """
        if missed is not None:
            with contextlib.suppress(RedisUnavailableError):  # kept, it only makes later slots wait
                self._redis.give_back(key, windows_of(limits, guard=self._guard), missed)
        at = time.monotonic()
        return at, self._reserve(key=key, limits=limits, target=target, max_wait=max_wait, day=missed is None)

    async def _sleep_until(self, key: str, wait: float) -> None:
        """Sleep `wait` seconds, counted as a message holding a slot of `key` (see `_room`)."""
        held = (id(asyncio.get_running_loop()), key)
        self._sleeping[held] = self._sleeping.get(held, 0) + 1
        try:
            if wait > 0:
                await asyncio.sleep(wait)
        finally:
            self._sleeping[held] -= 1
            if not self._sleeping[held]:
                del self._sleeping[held]

    async def _room_by(self, key: str, deadline: float) -> bool:
        """Wait until this process could send a message to the target at once; False at `deadline`.

        A slot is only worth taking when the message goes at its slot: one that then waits
        for a connection (its pool at the cap over all workers) arrives late, bunched with
        later ones, and the server would see more than N in a second. So while the target's
        pool has no live connection, one message at a time takes a slot (and none while a
        connection is being opened or waited for); with connections, `ROOM_PER_CONNECTION`
        each (they pipeline).
        """
        while not self._room(key):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(ROOM_POLL)
        return True

    def _room(self, key: str) -> bool:
        where = (id(asyncio.get_running_loop()), key)
        load = shared_pools().load(key)
        if load is None:  # a target type without a pool (Graph): no connection to wait for
            return True
        sleeping = self._sleeping.get(where, 0)
        live, queued, opening = load
        if live:
            return sleeping + queued < live * ROOM_PER_CONNECTION
        # No connection: one message opens one. Until the pool shows it (the message is on its
        # way from its slot to the pool), none other; after COLD_GRACE, one more (it went astray).
        if sleeping + queued + opening or time.monotonic() - self._cold.get(where, 0.0) < COLD_GRACE:
            return False
        self._cold[where] = time.monotonic()
        return True

    def _no_connection(self, *, target: str, retry: float) -> RateLimitedError:
        until = self._clock.now() + timedelta(seconds=retry)
        reason = (
            f"target {target!r} has shared rate limits, and its connections are all in use by other workers"
        )
        return RateLimitedError(
            f"{reason}; deferred until {until:%Y-%m-%d %H:%M:%S} UTC",
            reason=reason,
            until=until,
            target=target,
            hint="raise the target's max_connections if its server allows more",
        )

    def _unavailable(self, *, target: str, error: RedisUnavailableError, retry: float) -> RateLimitedError:
        until = self._clock.now() + timedelta(seconds=retry)
        reason = f"target {target!r} has shared rate limits, and {error.message}"
        return RateLimitedError(
            f"{reason}; deferred until {until:%Y-%m-%d %H:%M:%S} UTC",
            reason=reason,
            until=until,
            target=target,
            hint=error.hint,
        )


class SharedLimits:
    """What MAILWRIGHT_REDIS_URL builds: the rate limiter and the connection cap, on one Redis link."""

    def __init__(self, link: RedisLink, days: DayCounter, *, clock: Clock | None = None) -> None:
        self.link = link
        self.rate_limiter = SharedRateLimiter(days, RateWindows(link), clock=clock)
        self.connection_slots = RedisConnectionSlots(link)

    def close(self) -> None:
        self.connection_slots.close()
        self.link.close()


def limits_for(
    db: Database, *, redis_url: str | None, prefix: str | None = None, clock: Clock | None = None
) -> tuple[RateLimiter, SharedLimits | None]:
    """The process's rate limiter, and the connection cap it installs in the SMTP pools.

    With `redis_url` (MAILWRIGHT_REDIS_URL): shared by every worker, Redis checked now (a bad
    URL or an unreachable Redis is a ConfigError naming the variable). Without: per process.
    """
    days = DatabaseDayCounter(db)
    if not redis_url:
        shared_pools().set_connection_slots(None)
        return RateLimiter(days, clock=clock), None
    link = RedisLink.connect(redis_url, prefix=prefix)
    shared = SharedLimits(link, days, clock=clock or SystemClock())
    shared_pools().set_connection_slots(shared.connection_slots)
    return shared.rate_limiter, shared


__all__ = ["GUARD", "SharedLimits", "SharedRateLimiter", "limits_for", "windows_of"]
