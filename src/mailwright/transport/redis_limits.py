"""Limits shared by every worker through Redis: rate windows and the per-target connection cap.

Here because it opens sockets (the house rule: only transport does); the services
build the rate limiter on `RateWindows`, and the SMTP pools take their connection
slots from `RedisConnectionSlots`, injected as `pool.ConnectionSlots`.

The client is redis-py's synchronous one, called in threads (`asyncio.to_thread`).
A `redis.asyncio` client's connections belong to the event loop that opened them,
while one limiter serves every loop of the process (the worker's, the API's threads,
each `asyncio.run` of the CLI); the sync client's pool is thread-safe and loop-free.
A take costs a thread hop (tens of microseconds) beside the round trip: nothing at
the rates a limit is ever set to.

Each take is one Lua script run atomically by Redis (`EVALSHA`; redis-py's `Script`
loads it again when Redis answers NOSCRIPT, as after a restart), on Redis's own
clock (`TIME`), so the workers' clocks need not agree.

Keys are `<prefix>rate:<target id>:<window>` and `<prefix>conn:<target id>` (prefix
`mailwright:`), each with a TTL, so a target that stops sending leaves nothing; the
restart floors `rate:floor` and `conn:floor` expire too. Two small keys have none:
`rate:epoch` and `conn:epoch`, which say that this Redis still holds the keys (a Redis
restarted empty has lost them, and the scripts then pause new slots; see below).

Bounds: a worker killed with SIGKILL holds its connection slots until they expire,
at most `SLOT_TTL` (15 s) after its last refresh (every 5 s). A rate slot is handed out
at most `HORIZON` (1 s) ahead. After Redis lost its keys: no rate slot for 2.5 s (the
slots handed out before are past), no connection slot for 6 s (every live holder has
re-added its own).

Errors: a URL that does not parse or a Redis that does not answer at start is a
`ConfigError` naming MAILWRIGHT_REDIS_URL; later, a lost Redis is a
`RedisUnavailableError` the callers wait out with backoff. The URL is never logged
or shown with its password: only `redis://host:port/db`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from mailwright.errors import ConfigError, MailwrightError

log = logging.getLogger(__name__)

PREFIX = "mailwright:"
SETTING = "MAILWRIGHT_REDIS_URL"
SOCKET_TIMEOUT = 2.0  # a Redis that takes longer is treated as lost (and waited for)
# Connection slots: a holder's entry lives this long unless refreshed; refreshed every third of it.
SLOT_TTL = 15.0
SLOT_REFRESH = SLOT_TTL / 3
SLOT_POLL = (0.02, 0.25)  # a pool at the cap looks again after a random wait in this range (seconds)
WANTED_MS = 1500  # a waiter's "I want a slot" lasts this long unless said again (milliseconds)
WANTED_CACHE = 0.25  # seconds a pool trusts its last look at whether a slot is wanted
BACKOFF = (0.1, 5.0)  # Redis lost: first and longest wait between attempts

T = TypeVar("T")


class RedisUnavailableError(MailwrightError):
    """Redis does not answer (restarting, or the network): wait and try again, fail nothing."""

    code = "redis_unavailable"


def describe_url(url: str) -> str:
    """`redis://host:port/db`, without user or password: what messages and logs may show."""
    try:
        kwargs: dict[str, Any] = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError:
        return "(an unparsable URL)"
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    scheme = "rediss" if url.lower().startswith("rediss:") else "redis"
    return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class RedisLink:
    """One Redis for the process: a thread-safe client, its key prefix, and the calls with their errors."""

    def __init__(self, client: redis.Redis, *, prefix: str = PREFIX, where: str = "redis") -> None:
        self.client = client
        self.prefix = prefix
        self.where = where  # the URL without its password
        self._down_since: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, url: str, *, prefix: str | None = None) -> RedisLink:
        """A link to the Redis at `url`, checked now: a bad URL or no answer is a ConfigError.

        `prefix` defaults to the module's `PREFIX` as it is at the call (tests set their own).
        """
        prefix = PREFIX if prefix is None else prefix
        where = describe_url(url)
        fix = (
            f"fix {SETTING} (e.g. redis://host:6379/0, or redis://:password@host:6379/0), start that "
            "Redis, or unset the variable to keep rate limits and connection caps per process"
        )
        try:
            client = redis.Redis.from_url(
                url,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                health_check_interval=30,
                retry_on_timeout=False,
                retry=quick_retry(),
            )
        except ValueError as exc:
            # redis-py's message names the scheme it expected, never the password.
            raise ConfigError(f"{SETTING} is not a Redis URL: {exc}", hint=fix) from None
        link = cls(client, prefix=prefix, where=where)
        try:
            client.ping()
        except redis.exceptions.RedisError as exc:
            client.close()
            raise ConfigError(
                f"cannot reach Redis at {where} ({SETTING}): {_reason(exc)}", hint=fix
            ) from None
        return link

    def call(self, what: str, function: Callable[[], T]) -> T:
        """Run `function` against Redis; a lost Redis raises RedisUnavailableError (logged once an outage)."""
        try:
            result = function()
        except _UNAVAILABLE as exc:
            with self._lock:
                first = self._down_since is None
                if first:
                    self._down_since = time.monotonic()
            if first:
                log.warning(
                    "Redis at %s does not answer (%s) while %s: waiting for it, nothing fails",
                    self.where,
                    _reason(exc),
                    what,
                )
            raise RedisUnavailableError(
                f"Redis at {self.where} does not answer ({_reason(exc)})",
                hint=f"start Redis again, or check {SETTING}; messages wait for it",
            ) from exc
        with self._lock:
            down_since, self._down_since = self._down_since, None
        if down_since is not None:
            log.warning("Redis at %s answers again after %.1f s", self.where, time.monotonic() - down_since)
        return result

    def close(self) -> None:
        self.client.close()


def quick_retry() -> Retry:
    """One immediate retry (a pooled connection Redis closed); the waiting with backoff is ours.

    redis-py's default retries with backoff inside each call, for seconds, where nobody
    could log it or count it against how long the message may wait.
    """
    return Retry(NoBackoff(), 1)


def _reason(exc: BaseException) -> str:
    # redis-py's messages name host and port, never the password; keep them short.
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt `attempt` + 1 against a lost Redis: exponential, jittered."""
    first, longest = BACKOFF
    return float(min(longest, first * 2**attempt) * random.uniform(0.5, 1.0))


# --- rate windows ----------------------------------------------------------------------

# KEYS: the epoch marker, the restart floor, then one sorted set per window (members: tokens,
# scores: admission times in µs). ARGV: token, max_wait µs, horizon µs, pause µs, then per
# window: limit, window µs, spacing µs.
# A window admits at `slot` = the latest of now, the newest admission + spacing, and (when
# `limit` admissions are kept) the limit-th newest + window: so no window-long interval
# holds more than `limit` admissions, and admissions never go back in time.
# A Redis that lost its keys (restarted empty) has no epoch marker: the first take sets it
# and a floor `pause` ahead, before which nothing is admitted: the slots handed out before
# the loss (at most `horizon` ahead) are all past when new ones start.
# Returns {1, wait µs} taken; {2, wait µs} not taken: beyond the horizon, ask again later;
# {0, wait µs} not taken: beyond max_wait.
_TAKE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local max_wait = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local pause = tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], now)
  redis.call('SET', KEYS[2], now + pause, 'PX', math.ceil(pause / 1000) + 1)
end
local slot = now
local floor = redis.call('GET', KEYS[2])
if floor then
  slot = math.max(slot, tonumber(floor))
end
for i = 3, #KEYS do
  local key = KEYS[i]
  local base = 4 + (i - 3) * 3
  local limit = tonumber(ARGV[base + 1])
  local window = tonumber(ARGV[base + 2])
  local spacing = tonumber(ARGV[base + 3])
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if newest[2] then
    slot = math.max(slot, tonumber(newest[2]) + spacing)
  end
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, -limit, -limit, 'WITHSCORES')
    slot = math.max(slot, tonumber(oldest[2]) + window)
  end
end
local wait = slot - now
if wait > max_wait then
  return {0, wait}
end
if wait > horizon then
  return {2, wait}
end
for i = 3, #KEYS do
  local key = KEYS[i]
  local base = 4 + (i - 3) * 3
  local limit = tonumber(ARGV[base + 1])
  local window = tonumber(ARGV[base + 2])
  redis.call('ZADD', key, slot, ARGV[1])
  redis.call('ZREMRANGEBYRANK', key, 0, -(limit + 1))
  redis.call('PEXPIRE', key, math.ceil((wait + window) / 1000) + 1000)
end
return {1, wait}
"""

# How far ahead a slot may be handed out: a caller whose slot is further asks again later.
# Bounded so that a Redis restarted empty forgets only slots at most this far ahead.
HORIZON = 1.0


@dataclass(frozen=True, slots=True)
class Window:
    """At most `limit` admissions in any `seconds`-long interval, at least `spacing` seconds apart."""

    limit: int
    seconds: float
    spacing: float = 0.0
    name: str = ""  # the key's suffix ("second", "minute")


class Outcome(enum.Enum):
    TAKEN = 1
    LATER = 2  # beyond the horizon: ask again `wait` - horizon seconds from now
    REFUSED = 0  # beyond max_wait: nothing taken


@dataclass(frozen=True, slots=True)
class Taken:
    outcome: Outcome
    wait: float  # seconds from now to the slot (when not taken: to the slot it would have had)
    token: str

    @property
    def taken(self) -> bool:
        return self.outcome is Outcome.TAKEN


class RateWindows:
    """Sliding windows of admissions, one sorted set per target and window, shared by every worker.

    A slot is handed out at most `horizon` seconds ahead. After Redis lost its keys, nothing
    is admitted for `horizon` + the longest spaced window (`pause`), so the slots handed out
    before the loss are past before the first new one.
    """

    def __init__(self, link: RedisLink, *, horizon: float = HORIZON, pause: float | None = None) -> None:
        self._link = link
        self._take = link.client.register_script(_TAKE)
        self.horizon = horizon
        self.pause = horizon + 1.5 if pause is None else pause
        self._epoch = f"{link.prefix}rate:epoch"
        self._floor = f"{link.prefix}rate:floor"

    def key(self, target_key: str, window: Window) -> str:
        return f"{self._link.prefix}rate:{target_key}:{window.name or int(window.seconds)}"

    def take(self, target_key: str, windows: list[Window], *, max_wait: float) -> Taken:
        """Take the next slot if it is within the horizon and `max_wait` (one atomic script)."""
        token = uuid.uuid4().hex
        args: list[Any] = [token, _micro(max_wait), _micro(self.horizon), _micro(self.pause)]
        for window in windows:
            args += [window.limit, _micro(window.seconds), _micro(window.spacing)]
        keys = [self._epoch, self._floor, *(self.key(target_key, window) for window in windows)]
        outcome, wait = self._link.call("taking a rate-limit slot", lambda: self._take(keys=keys, args=args))
        return Taken(outcome=Outcome(int(outcome)), wait=max(0.0, int(wait) / 1e6), token=token)

    def give_back(self, target_key: str, windows: list[Window], token: str) -> None:
        """Return a slot taken for a message that will not go (its per-day budget is spent)."""
        keys = [self.key(target_key, window) for window in windows]

        def remove() -> None:
            with self._link.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zrem(key, token)
                pipe.execute()

        self._link.call("returning a rate-limit slot", remove)


def _micro(seconds: float) -> int:
    return round(seconds * 1_000_000)


# --- the connection cap ----------------------------------------------------------------

# KEYS: the target's holders (members: tokens, scores: expiry in ms), the epoch marker, the
# restart floor. ARGV: token, limit, ttl ms, pause ms.
# Expired holders (a killed worker's) are dropped first; a holder already in keeps its slot.
# A Redis that lost its keys (no epoch marker) gives no slot for `pause`: long enough for
# every live holder to re-add the slots it holds (its refresher), so the count is true again.
_ACQUIRE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local ttl = tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], now)
  redis.call('SET', KEYS[3], now + tonumber(ARGV[4]), 'PX', tonumber(ARGV[4]))
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  return 1
end
return 0
"""

# KEYS[1]: the holders; ARGV: ttl ms, then the tokens this process holds. Re-added even when
# missing (Redis restarted empty, or the entry expired in an outage): the connection is open,
# so the count must show it, and others wait until it closes.
_REFRESH = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return #ARGV - 1
"""


class RedisConnectionSlot:
    """One held connection slot; `release` gives it back (in the background, never blocking)."""

    def __init__(self, owner: RedisConnectionSlots, key: str, token: str) -> None:
        self._owner = owner
        self.key = key
        self.token = token
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner._release(self)


class RedisConnectionSlots:
    """A counting semaphore per target over every worker: `pool.ConnectionSlots` on Redis.

    A holder is a token in the target's sorted set, scored with its expiry. This process
    refreshes its tokens every `SLOT_REFRESH` seconds from a daemon thread, so a worker
    killed with SIGKILL stops refreshing and its slots come back at most `SLOT_TTL`
    seconds after its last refresh. At the cap, `acquire` waits (polling with jitter),
    never fails; with Redis lost it waits with backoff. A Redis restarted empty gives
    no slot for `SLOT_REFRESH` + 1 s, while the holders' refreshers re-add theirs.
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        ttl: float = SLOT_TTL,
        refresh: float | None = None,
        pause: float | None = None,
    ) -> None:
        self._link = link
        self._ttl_ms = round(ttl * 1000)
        self._refresh_every = refresh if refresh is not None else ttl / 3
        self._acquire = link.client.register_script(_ACQUIRE)
        # After Redis lost its keys: no new slot until every holder's refresher has been by.
        self.pause_ms = round((SLOT_REFRESH + 1.0 if pause is None else pause) * 1000)
        self._epoch = f"{link.prefix}conn:epoch"
        self._floor = f"{link.prefix}conn:floor"
        self._refresh = link.client.register_script(_REFRESH)
        self._held: dict[str, set[str]] = {}  # key -> tokens held by this process
        self._wanted_seen: dict[str, tuple[float, bool]] = {}  # key -> (when looked, waited for)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def key(self, target_key: str) -> str:
        return f"{self._link.prefix}conn:{target_key}"

    async def acquire(self, *, key: str, limit: int) -> RedisConnectionSlot:
        """A slot among `limit` for the target `key`: waits while all are held, or while Redis is lost."""
        redis_key = self.key(key)
        token = uuid.uuid4().hex
        args: list[Any] = [token, limit, self._ttl_ms, self.pause_ms]
        keys = [redis_key, self._epoch, self._floor]
        attempt = 0
        while True:
            try:
                got = await asyncio.to_thread(
                    self._link.call,
                    "taking a connection slot",
                    lambda: self._acquire(keys=keys, args=args),
                )
            except RedisUnavailableError:
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            if got:
                break
            await asyncio.to_thread(self._want, redis_key)
            await asyncio.sleep(random.uniform(*SLOT_POLL))
        with self._lock:
            self._held.setdefault(redis_key, set()).add(token)
            self._start_refresher()
        return RedisConnectionSlot(self, redis_key, token)

    def _want(self, redis_key: str) -> None:
        """Say that a slot is waited for: idle connections of other workers close and give theirs."""
        with contextlib.suppress(RedisUnavailableError):
            self._link.call(
                "asking for a connection slot",
                lambda: self._link.client.set(f"{redis_key}:wanted", "1", px=WANTED_MS),
            )

    async def wanted(self, *, key: str) -> bool:
        """Whether another worker waits for one of the target's slots (looked up at most every
        WANTED_CACHE seconds per target: every idle connection of a pool asks)."""
        redis_key = self.key(key)
        now = time.monotonic()
        seen = self._wanted_seen.get(redis_key)
        if seen is not None and now - seen[0] < WANTED_CACHE:
            return seen[1]
        try:
            found = bool(
                await asyncio.to_thread(
                    self._link.call,
                    "looking for waiting workers",
                    lambda: self._link.client.exists(f"{redis_key}:wanted"),
                )
            )
        except RedisUnavailableError:
            found = False
        self._wanted_seen[redis_key] = (now, found)
        return found

    def held(self) -> dict[str, int]:
        with self._lock:
            return {key: len(tokens) for key, tokens in self._held.items() if tokens}

    def _release(self, slot: RedisConnectionSlot) -> None:
        with self._lock:
            tokens = self._held.get(slot.key)
            if tokens is not None:
                tokens.discard(slot.token)
                if not tokens:
                    del self._held[slot.key]
        # Off the caller's thread: a pool closes connections inside its event loop.
        threading.Thread(target=self._remove, args=(slot,), daemon=True, name="redis-slot-release").start()

    def _remove(self, slot: RedisConnectionSlot) -> None:
        for attempt in range(5):
            try:
                self._link.call(
                    "returning a connection slot", lambda: self._link.client.zrem(slot.key, slot.token)
                )
                return
            except RedisUnavailableError:
                time.sleep(backoff(attempt))
        # Redis stayed away: the entry expires by itself within SLOT_TTL.

    def _start_refresher(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._refresher, daemon=True, name="redis-slot-refresh")
            self._thread.start()

    def _refresher(self) -> None:
        wait = self._refresh_every
        while not self._stop.wait(wait):
            # Redis lost: look again soon, so a restarted (empty) Redis learns our slots at once.
            wait = self._refresh_every if self.refresh_now() else min(0.5, self._refresh_every)

    def refresh_now(self) -> bool:
        """Push the expiry of every slot this process holds (re-adding any Redis lost); False: Redis lost."""
        with self._lock:
            held = {key: sorted(tokens) for key, tokens in self._held.items() if tokens}
        for key, tokens in held.items():
            try:
                self._link.call("refreshing connection slots", functools.partial(self._push, key, tokens))
            except RedisUnavailableError:
                return False  # logged by the link
        return True

    def _push(self, key: str, tokens: list[str]) -> None:
        self._refresh(keys=[key], args=[self._ttl_ms, *tokens])

    def close(self) -> None:
        self._stop.set()
