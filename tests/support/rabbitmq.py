"""A private RabbitMQ server for tests: its own node, port and data directory, stopped afterwards.

Started from the Debian package's scripts (`make test` installs rabbitmq-server), so the tests
need no RabbitMQ running on the machine, and one test may stop and restart "its" broker
without touching anyone else's. The data directory survives a restart: durable queues and
persistent messages come back, as on a real server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from tests.support.ports import free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
START_TIMEOUT = 120.0  # Erlang boots slowly on a loaded machine


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


class RabbitMQServer:
    """`start()`, `stop()` (SIGTERM, then waits), `restart()`; `url` is amqp://guest:guest@127.0.0.1:PORT/."""

    def __init__(self, directory: Path) -> None:
        if not os.path.exists(SERVER):
            raise RuntimeError(f"{SERVER} is missing: run `bash scripts/install-system-deps.sh`")
        self.directory = directory
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"mwtest{self.port}@localhost"
        self._process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "enabled_plugins").write_text("[].\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        d = self.directory
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(d),  # the Erlang cookie goes here
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
        )
        return env

    def start(self) -> Self:
        # A port taken between choosing and binding it (see tests/support/ports.py) is retried
        # with a new distribution port; the AMQP port stays, since clients already hold the URL.
        for attempt in range(3):
            failure = self._start_once()
            if failure is None:
                return self
            if attempt < 2 and ("already_used" in failure or "eaddrinuse" in failure):
                self.dist_port = free_port()
                continue
            raise RuntimeError(f"RabbitMQ did not start on port {self.port}:\n{failure}")
        raise AssertionError("unreachable")

    def _start_once(self) -> str | None:
        """None once the server answers, else the end of its log."""
        log = self.directory / "server.log"
        before = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            self._process = subprocess.Popen(
                [SERVER],
                env=self._env(),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                with log.open("rb") as read:
                    read.seek(before)
                    tail = read.read().decode(errors="replace")[-3000:]
                self.stop()
                return tail
            time.sleep(0.2)
        return None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()
