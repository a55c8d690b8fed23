"""Announce the runs a test (or benchmark) process queues on RabbitMQ, as `serve --no-worker` does.

The process queues runs through its Services; the announcer's event loop runs in a thread so
that synchronous test code can go on queuing while hints are published.
"""

from __future__ import annotations

import asyncio
import threading

from mailwright.engine.broker import Announcer, make_queue
from mailwright.services.app import Services


async def _not_here(run_id: str) -> None:
    raise AssertionError("this process executes no runs")


class AnnouncerThread:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._loop = asyncio.new_event_loop()
        settings = services.settings
        queue = make_queue(settings.broker, execute=_not_here, pool=None, concurrency=8, consume=False)
        self._announcer = Announcer(queue, services.ledger.pool_of)

    def start(self) -> AnnouncerThread:
        threading.Thread(target=self._loop.run_forever, name="announcer", daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._announcer.start(), self._loop).result(timeout=60)
        self._services.runs.on_queued = self._announcer.notify
        return self

    def stop(self) -> None:
        self._services.runs.on_queued = None
        asyncio.run_coroutine_threadsafe(self._announcer.stop(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
