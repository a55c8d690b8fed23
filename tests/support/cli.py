"""Run the real ``mailwright`` console script in a subprocess, one data directory per test.

``CLI(home)`` runs commands with ``MAILWRIGHT_HOME=home`` (and without any other
``MAILWRIGHT_*`` variable of the caller), stdin given explicitly (``/dev/null`` unless
``input`` is passed) and a timeout.  ``cli(...)`` runs one command and waits;
``cli.spawn(...)`` starts one on a small thread pool and returns a ``Future``, for
independent commands that can run side by side (each start costs about a second).

Every result is remembered, so a test can check at the end that a secret never
appeared in any output (``assert_never_shown``) or in any file of the data directory
(``assert_not_stored``).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CLI", "MAILWRIGHT", "TIMEOUT", "CLIResult", "assert_error", "assert_ok"]

MAILWRIGHT = Path(sys.executable).parent / "mailwright"
TIMEOUT = 60.0
_PARALLEL = 4


@dataclass(frozen=True)
class CLIResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float = 0.0

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        """stdout parsed as JSON (fails the test with the output when it is not JSON)."""
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"stdout is not valid JSON ({exc}):\n{self}") from None

    def __str__(self) -> str:
        return (
            f"$ mailwright {' '.join(self.args)}\n[exit {self.returncode} after {self.seconds:.1f} s]\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )


class CLI:
    def __init__(self, home: Path) -> None:
        self.home = home
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
        env.pop("COLUMNS", None)  # help and usage errors are wrapped as for a pipe
        env["MAILWRIGHT_HOME"] = str(home)
        self.env = env
        self.results: list[CLIResult] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=_PARALLEL, thread_name_prefix="cli")

    def __call__(
        self,
        *args: object,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> CLIResult:
        argv = tuple(str(a) for a in args)
        started = time.monotonic()
        proc = subprocess.run(
            [str(MAILWRIGHT), *argv],
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            encoding="utf-8",
            env={**self.env, **(env or {})},
            timeout=timeout,
            check=False,
        )
        result = CLIResult(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
        with self._lock:
            self.results.append(result)
        return result

    def spawn(
        self,
        *args: object,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Future[CLIResult]:
        """Start a command in the background; ``.result()`` waits for it."""
        return self._pool.submit(self, *args, input=input, env=env)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ---- checks over everything run so far ----

    def data_files(self) -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in sorted(self.home.rglob("*")) if p.is_file()}

    def assert_never_shown(self, secret: str, *, username: str | None = None) -> None:
        """``secret`` (and its base64 forms, as AUTH sends it) is in no stdout or stderr so far."""
        forms = _forms(secret, username)
        assert self.results, "no command was run"
        for result in self.results:
            for form in forms:
                assert form not in result.output, f"secret shown in the output of:\n{result}"

    def assert_not_stored(self, secret: str) -> None:
        """No file under the data directory holds ``secret`` in plain text (or plain base64)."""
        files = self.data_files()
        assert files, f"no files under {self.home}"
        for form in _forms(secret, None):
            needle = form.encode()
            for path, data in files.items():
                assert needle not in data, f"{form!r} stored in plain text in {path}"

    def assert_no_traceback(self) -> None:
        for result in self.results:
            assert "Traceback" not in result.output, f"traceback in:\n{result}"


def _forms(secret: str, username: str | None) -> list[str]:
    forms = [secret, base64.b64encode(secret.encode()).decode()]
    if username is not None:
        forms.append(base64.b64encode(f"\0{username}\0{secret}".encode()).decode())
    return forms


def assert_ok(result: CLIResult) -> CLIResult:
    assert result.returncode == 0, str(result)
    assert "Traceback" not in result.output, str(result)
    return result


def assert_error(result: CLIResult, code: int, *words: str) -> str:
    """Exit ``code``; stderr is one ``error:`` line, optionally one ``hint:`` line, with ``words``.

    Returns stderr for further checks.
    """
    assert result.returncode == code, str(result)
    assert "Traceback" not in result.output, str(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, f"expected 'error:' [+ 'hint:'] on stderr:\n{result}"
    assert lines[0].startswith("error: "), str(result)
    if len(lines) == 2:
        assert lines[1].startswith("hint: "), str(result)
    for word in words:
        assert word in result.stderr, f"{word!r} not in stderr:\n{result}"
    return result.stderr
