"""A real `mailwright serve` process on 127.0.0.1 for the security probes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

MAILWRIGHT = str(Path(sys.executable).parent / "mailwright")
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """`mailwright serve` with MAILWRIGHT_HOME=home (no other MAILWRIGHT_* of the caller)."""

    def __init__(
        self,
        home: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        umask: int = 0o022,
    ) -> None:
        self.home = home
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
        environment["MAILWRIGHT_HOME"] = str(home)
        environment.update(env or {})
        self.output = ""
        self._proc = subprocess.Popen(
            [MAILWRIGHT, "serve", "--port", str(self.port), "--sandbox-port", "0", *args],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            umask=umask,
        )

    def start(self) -> Self:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"serve did not start:\n{self.stdout}\n{self.stderr}")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
        try:
            out, err = self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, err = self._proc.communicate()
        self.stdout, self.stderr = out, err

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    stdout: str = ""
    stderr: str = ""
