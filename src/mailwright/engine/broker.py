"""The run queue: how "look at run X" reaches a worker that may execute it.

Two brokers, both Taskiq, chosen by `MAILWRIGHT_BROKER`:

- `embedded` (the default): Taskiq's in-process broker. The worker of this process
  hands runs to itself; nothing else to start.
- `amqp://user:pw@host:5672/vhost`: Taskiq on RabbitMQ (taskiq-aio-pika), for
  workers on many machines. One durable quorum queue per worker pool
  (`mailwright.runs` for workers without a pool, `mailwright.runs.pool.NAME` for
  the others), persistent messages, publisher confirms (aio-pika's default), and a
  prefetch equal to the worker's concurrency, so that a busy worker leaves hints to
  the others.

Whatever the broker, a queue message is a hint, never the truth: the database is.
A duplicated hint is a no-op (the claim decides), and a lost one (a publish that
failed, a worker killed between receiving and claiming, RabbitMQ restarted) is
found by the sweeper (engine/worker.py), which announces again every due run that
no hint announced lately. Hints are therefore acknowledged when received: a
batch may run for hours, far beyond RabbitMQ's delivery-acknowledgement timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from taskiq import AsyncBroker, InMemoryBroker
from taskiq.acks import AcknowledgeType
from taskiq.receiver import Receiver

from mailwright.errors import ConfigError
from mailwright.secrets import Secret

log = logging.getLogger(__name__)

TASK_NAME = "mailwright.execute_run"
QUEUE_PREFIX = "mailwright.runs"
EXCHANGE = "mailwright"
RECONNECT_MAX = 30.0  # seconds between attempts to reach RabbitMQ, at most
STOP_SECONDS = 10.0  # how long a stopping consumer waits for Taskiq to let go
PUBLISH_SECONDS = 10.0  # a publish (with its confirm) that takes longer is given up: the sweeper covers it

Execute = Callable[[str], Awaitable[Any]]


class RunQueue(Protocol):
    """Announces runs to the workers that may execute them."""

    @property
    def distributed(self) -> bool:
        """True when other processes take hints from this queue (a sweeper is needed)."""
        ...

    async def start(self) -> None: ...

    async def hint(self, run_id: str, pool: str | None) -> bool:
        """Announce the run to `pool`'s workers; False if the announcement could not be made."""
        ...

    async def stop(self, *, wait: float = STOP_SECONDS) -> None:
        """Take no more hints; wait up to `wait` seconds for the runs taken from the queue to end."""
        ...


def queue_name(pool: str | None) -> str:
    return QUEUE_PREFIX if pool is None else f"{QUEUE_PREFIX}.pool.{pool}"


def broker_kind(value: str) -> str:
    """ "embedded" or "amqp"; a clear error for anything else."""
    if value == "embedded":
        return "embedded"
    scheme = urlsplit(value).scheme
    if scheme in ("amqp", "amqps") and urlsplit(value).hostname:
        return "amqp"
    raise ConfigError(
        f"MAILWRIGHT_BROKER={_shown(value)!r} is neither 'embedded' nor an amqp:// URL",
        hint="use MAILWRIGHT_BROKER=embedded (one machine) or amqp://user:password@host:5672/vhost "
        "(RabbitMQ, for workers on many machines)",
    )


def _shown(url: str) -> str:
    """The URL without its password: a broker URL may hold one, and errors and logs are read by many."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _task(execute: Execute) -> Callable[[str], Awaitable[Any]]:
    """The Taskiq task: a plain function (Taskiq sets attributes that a bound method refuses)."""

    async def execute_run(run_id: str) -> Any:
        return await execute(run_id)

    return execute_run


def make_queue(
    broker: str, *, execute: Execute, pool: str | None, concurrency: int, consume: bool
) -> RunQueue:
    """The run queue `MAILWRIGHT_BROKER` names; `consume`: this process executes the runs of `pool`."""
    if broker_kind(broker) == "embedded":
        return EmbeddedQueue(execute)
    return AmqpQueue(broker, execute=execute, pool=pool, concurrency=concurrency, consume=consume)


class EmbeddedQueue:
    """Taskiq's in-process broker: the hint runs the task in this process at once."""

    distributed = False

    def __init__(self, execute: Execute) -> None:
        # Many runs may wait on slow servers at once; each is a light coroutine.
        self._broker = InMemoryBroker(max_async_tasks=64, propagate_exceptions=False)
        self._task = self._broker.register_task(_task(execute), task_name=TASK_NAME)

    async def start(self) -> None:
        await self._broker.startup()

    async def hint(self, run_id: str, pool: str | None) -> bool:
        await self._task.kiq(run_id)
        return True

    async def stop(self, *, wait: float = STOP_SECONDS) -> None:
        await self._broker.shutdown()


class AmqpQueue:
    """Taskiq on RabbitMQ: publishes hints to each pool's queue, consumes this worker's pool's."""

    distributed = True

    def __init__(
        self, url: str, *, execute: Execute, pool: str | None, concurrency: int, consume: bool
    ) -> None:
        self._url = url
        password = urlsplit(url).password
        if password:
            Secret(password).reveal()  # known to the log filter from now on: scrubbed from every record
        self._execute = execute
        self._pool = pool
        self._concurrency = concurrency
        self._consume = consume
        self._publishers: dict[str | None, AsyncBroker] = {}
        self._opening = asyncio.Lock()
        self._stop = asyncio.Event()
        self._consuming: asyncio.Task[None] | None = None
        self._warned_at = 0.0

    # --- the brokers -----------------------------------------------------------------------

    def _new_broker(self, pool: str | None) -> AsyncBroker:
        from taskiq_aio_pika import AioPikaBroker, Exchange, Queue

        broker = AioPikaBroker(
            self._url,
            qos=self._concurrency,
            exchange=Exchange(name=EXCHANGE),
            task_queues=[Queue(name=queue_name(pool))],
            dead_letter_queue=Queue(name=f"{QUEUE_PREFIX}.dead_letter"),
        )
        broker.register_task(_task(self._execute), task_name=TASK_NAME)
        return broker

    async def _publisher(self, pool: str | None) -> AsyncBroker:
        async with self._opening:
            broker = self._publishers.get(pool)
            if broker is None:
                broker = self._new_broker(pool)
                await broker.startup()  # raises while RabbitMQ cannot be reached: tried again next time
                self._publishers[pool] = broker
            return broker

    # --- the run queue -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._consume:
            self._consuming = asyncio.create_task(self._consume_forever())

    async def hint(self, run_id: str, pool: str | None) -> bool:
        try:
            async with asyncio.timeout(PUBLISH_SECONDS):
                broker = await self._publisher(pool)
                task = broker.find_task(TASK_NAME)
                assert task is not None  # registered by _new_broker
                await task.kiq(run_id)
            return True
        except Exception as exc:
            # The run is in the database: the sweeper announces it again once RabbitMQ is back.
            self._warn(f"could not publish run {run_id} to RabbitMQ ({type(exc).__name__}: {exc})")
            return False

    async def stop(self, *, wait: float = STOP_SECONDS) -> None:
        self._stop.set()
        if self._consuming is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._consuming), timeout=wait)
            if not self._consuming.done():
                self._consuming.cancel()
        for broker in self._publishers.values():
            with contextlib.suppress(Exception):
                await broker.shutdown()
        self._publishers.clear()

    # --- consuming ------------------------------------------------------------------------------

    async def _consume_forever(self) -> None:
        """Take hints from this pool's queue until stopped, connecting again after a failure."""
        backoff = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await self._consume_once()
            except Exception as exc:
                self._warn(f"consuming {queue_name(self._pool)!r} stopped ({type(exc).__name__}: {exc})")
            if self._stop.is_set():
                return
            backoff = 1.0 if time.monotonic() - started > RECONNECT_MAX else min(backoff * 2, RECONNECT_MAX)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=backoff)

    async def _consume_once(self) -> None:
        broker = self._new_broker(self._pool)
        broker.is_worker_process = True
        await broker.startup()
        log.info("taking runs from RabbitMQ queue %r", queue_name(self._pool))
        try:
            receiver = Receiver(
                broker,
                max_async_tasks=self._concurrency,
                propagate_exceptions=False,
                run_startup=False,
                ack_type=AcknowledgeType.WHEN_RECEIVED,
            )
            await receiver.listen(self._stop)
        finally:
            with contextlib.suppress(Exception):
                await broker.shutdown()

    def _warn(self, message: str) -> None:
        """A warning at most every 10 s: RabbitMQ down for minutes must not flood the log."""
        if time.monotonic() - self._warned_at >= 10.0:
            self._warned_at = time.monotonic()
            log.warning("%s; the database keeps the run, the sweeper announces it again", message)


class Announcer:
    """Announces the runs this process queues, for a process that executes none (`serve --no-worker`)."""

    def __init__(self, queue: RunQueue, pool_of: Callable[[str], str | None]) -> None:
        self.queue = queue
        self._pool_of = pool_of
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.queue.start()

    def notify(self, run_id: str) -> None:
        """Thread-safe (the API's handlers run in threads): announce the run soon."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._spawn, run_id)

    def _spawn(self, run_id: str) -> None:
        task = asyncio.create_task(self._announce(run_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _announce(self, run_id: str) -> None:
        # A failure is logged by the queue; the workers' sweeper announces the run later.
        pool = await asyncio.to_thread(self._pool_of, run_id)
        await self.queue.hint(run_id, pool)

    async def stop(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=STOP_SECONDS)
        await self.queue.stop()
