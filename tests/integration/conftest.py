"""Fixtures for integration tests: a Mailwright home per test and helpers to point targets at servers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from mailwright.config import Settings
from mailwright.secrets import Secret
from mailwright.services.account_keys import AccountKeyCreate
from mailwright.services.app import Services
from mailwright.services.target_public import TargetPublic
from mailwright.services.targets import TargetCreate
from tests.integration.test_web_targets import web  # noqa: F401 (a fixture: the signed-in web UI, for every module here)
from tests.support.apiserver import APIServer
from tests.support.cli import CLI
from tests.support.postgres import ADMIN_URL, fresh_database
from tests.support.redis_server import SHARED_URL, RedisServer, answers
from tests.support.smtpserver import SMTPTestServer
from tests.support.tlsfiles import TLSFiles

PASSWORD = "Gm4il-App-Pa55word"


@pytest.fixture
def mw(tmp_path: Path) -> Iterator[Services]:
    services = Services(Settings(home=tmp_path / "home"))
    yield services
    services.close()


class Targets:
    """Creates account keys and targets aimed at test servers."""

    def __init__(self, mw: Services, tls_files: TLSFiles) -> None:
        self.mw = mw
        self.tls_files = tls_files
        self._count = 0

    def key(
        self,
        name: str = "alice",
        *,
        username: str = "alice@example.org",
        password: str = PASSWORD,
        sender: str | None = None,
    ) -> str:
        self.mw.account_keys.create(
            AccountKeyCreate(name=name, username=username, password=Secret(password), sender=sender)
        )
        return name

    def target(
        self, server: SMTPTestServer | Any, *, security: str, key: str | None = None, **settings: Any
    ) -> TargetPublic:
        self._count += 1
        settings.setdefault("ca_file", str(self.tls_files.ca_path))
        settings.setdefault("connect_timeout", 5)
        settings.setdefault("command_timeout", 5)
        return self.mw.targets.create(
            TargetCreate(
                display_name=settings.pop("display_name", f"target {self._count}"),
                server=settings.pop("server", "127.0.0.1"),
                port=server.port,
                security=security,
                account_key=key,
                no_account_keys=key is None,
                **settings,
            )
        )


@pytest.fixture
def targets(mw: Services, tls_files: TLSFiles) -> Targets:
    return Targets(mw, tls_files)


@pytest.fixture
def api(mw: Services) -> Iterator[httpx.Client]:
    """The REST API of `mw`, served on loopback with its worker, and a client with a valid token."""
    token = mw.tokens.create("tests").token
    with (
        APIServer(mw) as server,
        httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as client,
    ):
        yield client


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CLI]:
    """The CLI on ``tmp_path / "home"``, the same data directory as the ``mw`` fixture."""
    runner = CLI(tmp_path / "home")
    yield runner
    runner.close()
    runner.assert_no_traceback()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database for the test, dropped afterwards."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(fresh_database())
        except sa.exc.OperationalError as exc:
            hint = "run `bash scripts/install-system-deps.sh`"
            pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL}: {hint} ({exc})")
        yield url


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Redis on 127.0.0.1:6379 if it answers, else a private one for this module."""
    if answers(SHARED_URL):
        yield SHARED_URL
        return
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url
