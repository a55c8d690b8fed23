"""Finding 5: web log-ins are throttled per account and per client address, and failures are logged.

Through real HTTP against the app on 127.0.0.1. The throttle's clock is a FakeClock and
its pause advances that clock instead of sleeping, so the test sees each slowed answer
without waiting for it. Client addresses other than 127.0.0.1 come from
X-Forwarded-For, which uvicorn trusts from 127.0.0.1 (as from a reverse proxy there).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from mailwright.config import Settings
from mailwright.services.app import Services
from mailwright.services.web_auth import LoginThrottle
from tests.support.apiserver import APIServer
from tests.support.clock import FakeClock

PASSWORD = "Right-Passw0rd-For-Throttle"
WRONG = "Wrong-Guess-0000-"


@dataclass
class Site:
    services: Services
    base_url: str
    clock: FakeClock
    pauses: list[float] = field(default_factory=list)

    def log_in(self, secret: str, *, address: str | None = None) -> httpx.Response:
        headers = {"X-Forwarded-For": address} if address else {}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=30) as client:
            form = client.get("/login")
            match = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
            assert match, form.text
            return client.post(
                "/login", data={"secret": secret, "login_csrf": match.group(1), "next": "/targets"}
            )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    services = Services(Settings(home=tmp_path / "home"))
    services.web_auth.set_password(PASSWORD, PASSWORD)
    clock = FakeClock(wall=datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        clock.advance(seconds)

    services.web_auth.throttle = LoginThrottle(clock=clock, sleep=pause)
    with APIServer(services) as server:
        yield Site(services, server.base_url, clock, pauses)
    services.close()


def test_forty_wrong_passwords_are_slowed_then_refused_and_the_right_one_waits(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    answers = [site.log_in(f"{WRONG}{n}") for n in range(40)]
    statuses = [answer.status_code for answer in answers]
    # Four free failures, four slowed ones (1, 2, 4, 8 s), then 429 for the other 32.
    assert statuses == [401] * 8 + [429] * 32, statuses
    assert site.pauses == [1.0, 2.0, 4.0, 8.0]
    last = answers[-1]
    assert last.headers["Retry-After"] == "16"
    assert "Too many failed log-ins. Wait 16 s" in last.text

    # The right password is refused too, until Retry-After has passed.
    early = site.log_in(PASSWORD)
    assert early.status_code == 429 and early.headers["Retry-After"] == "16"
    site.clock.advance(15)
    still = site.log_in(PASSWORD)
    assert still.status_code == 429 and still.headers["Retry-After"] == "1"
    site.clock.advance(1)
    signed_in = site.log_in(PASSWORD)
    assert signed_in.status_code == 303 and "mw_session" in signed_in.cookies

    # Each failure was logged with the client's address, never with the secret.
    failures = [r.getMessage() for r in caplog.records if "log-in failed" in r.getMessage()]
    assert len(failures) == 9
    assert all("from 127.0.0.1" in line for line in failures)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert WRONG not in text and PASSWORD not in text


def test_one_address_locked_out_does_not_lock_the_admin_out_elsewhere(site: Site) -> None:
    for n in range(10):
        site.log_in(f"{WRONG}{n}", address="192.0.2.7")
    assert site.log_in(PASSWORD, address="192.0.2.7").status_code == 429
    assert site.log_in(PASSWORD, address="198.51.100.9").status_code == 303


def test_guesses_spread_over_many_addresses_lock_the_account(site: Site) -> None:
    statuses = [site.log_in(f"{WRONG}{n}", address=f"203.0.113.{n}").status_code for n in range(14)]
    # Each address fails once; the account is slowed from its 10th failure and locked after its 14th.
    assert statuses == [401] * 13 + [429], statuses
    assert site.pauses == [1.0, 2.0, 4.0, 8.0]
    refused = site.log_in(PASSWORD, address="203.0.113.200")
    assert refused.status_code == 429
    site.clock.advance(int(refused.headers["Retry-After"]))
    assert site.log_in(PASSWORD, address="203.0.113.200").status_code == 303


def test_a_right_password_clears_the_count(site: Site) -> None:
    for n in range(4):
        assert site.log_in(f"{WRONG}{n}").status_code == 401
    assert site.log_in(PASSWORD).status_code == 303
    for n in range(4):
        assert site.log_in(f"{WRONG}{n}").status_code == 401
    assert site.pauses == []


def test_the_counts_are_bounded_in_memory_and_forgotten_after_an_idle_hour() -> None:
    clock = FakeClock(wall=datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    throttle = LoginThrottle(clock=clock)
    for n in range(LoginThrottle.MAX_KEYS + 50):
        throttle.admit(account=f"user{n}", address=f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        clock.advance(0.001)
    assert len(throttle._keys) <= LoginThrottle.MAX_KEYS
    for _ in range(4):
        throttle.admit(account="other", address="192.0.2.1")
    assert throttle.failures(address="192.0.2.1") == 4
    clock.advance(LoginThrottle.FORGET_AFTER + 1)
    throttle.admit(account="other", address="192.0.2.1")
    assert throttle.failures(address="192.0.2.1") == 1
