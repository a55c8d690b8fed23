"""Runs finished in one process wake the callers waiting for them in another, through Redis.

`POST /api/v1/send-email` with wait on a `serve --no-worker` host has its run
executed by a worker elsewhere. That worker PUBLISHes the run's id on one channel
when the run ends; each process that has callers waiting SUBSCRIBEs to it (one
thread) and wakes those waiting for that id. Pub/sub may lose a message (a
reconnect): the waiters still look at the run's row now and then
(services/waiting.py), so a lost wake-up costs time, never an answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

CHANNEL = "mailwright:runs:finished"
RECONNECT_MAX = 30.0


class RedisFinishes:
    """Announces finished runs and listens for the announcements of other processes."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
        self._listening = False
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._warned_at = 0.0

    def announce(self, run_id: str) -> None:
        try:
            self._client.publish(CHANNEL, run_id)
        except Exception as exc:  # waiters elsewhere fall back to reading the run's row
            self._warn(f"could not announce the end of run {run_id} on Redis ({type(exc).__name__})")

    def listen(self, wake: Callable[[str], None]) -> None:
        """Start (once) a thread that calls `wake(run_id)` for each run finished anywhere."""
        with self._lock:
            if self._listening:
                return
            self._listening = True
        threading.Thread(
            target=self._listen_forever, args=(wake,), name="redis-finishes", daemon=True
        ).start()

    def close(self) -> None:
        self._stopped.set()
        self._client.close()

    def _listen_forever(self, wake: Callable[[str], None]) -> None:
        backoff = 0.5
        while not self._stopped.is_set():
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                backoff = 0.5
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        wake(data.decode() if isinstance(data, bytes) else str(data))
            except Exception as exc:
                if self._stopped.is_set():
                    return
                self._warn(
                    f"listening for finished runs on Redis failed ({type(exc).__name__}); reconnecting"
                )
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX)

    def _warn(self, message: str) -> None:
        if time.monotonic() - self._warned_at >= 10.0:
            self._warned_at = time.monotonic()
            log.warning("%s", message)
