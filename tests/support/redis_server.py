"""Redis for tests: the one on 127.0.0.1:6379 when it answers, else a private `redis-server`.

A private server runs on a free port with no persistence (`--save ''`, no AOF), its files
in a temporary directory; it can be stopped and started again on the same port (a
restart that loses every key, as a Redis without persistence does). `make test` installs
the `redis-server` package where it is missing.

    with RedisServer(tmp_path / "redis") as server:
        url = server.url
        server.restart(down_for=1.0)

Tests share one Redis, so each uses its own key prefix (`unique_prefix()`).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from mailwright.transport.redis_limits import RedisLink
from tests.support.ports import free_port

SHARED_URL = "redis://127.0.0.1:6379/0"


def unique_prefix() -> str:
    return f"mwtest:{uuid.uuid4().hex[:12]}:"


def settled(link: RedisLink) -> None:
    """Mark the prefix's keys as those of a Redis in use: no pause as after a restart that lost them."""
    link.client.set(f"{link.prefix}rate:epoch", "test")
    link.client.set(f"{link.prefix}conn:epoch", "test")


def answers(url: str, *, timeout: float = 1.0) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer:
    """A private `redis-server` process on 127.0.0.1 (``start()``/``stop()``/``restart()``, or ``with``)."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> Self:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: `apt-get install redis-server` (make test does)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        command += ["--dir", str(self.directory), "--daemonize", "no", "--protected-mode", "no"]
        with (self.directory / "redis.log").open("ab") as log:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not answers(self.url, timeout=0.5):
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (SIGKILL after `timeout`); idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: Redis gone at once, as in a crash."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(10)

    def restart(self, *, down_for: float = 0.0) -> None:
        """Killed, `down_for` seconds away, then started again on the same port (empty)."""
        self.kill()
        time.sleep(down_for)
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
