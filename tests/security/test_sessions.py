"""Finding 6: a web session ends when the token that opened it is revoked or the password changes.

Through real HTTP against the app on 127.0.0.1: log in with the form, use the session
cookie, change what opened it, and the next page asks for a log-in again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from mailwright.config import Settings
from mailwright.domain.roles import Role
from mailwright.services.app import Services
from mailwright.storage.tables import AppSettingRow, WebSessionRow, utcnow
from tests.support.apiserver import APIServer

PASSWORD = "Session-Passw0rd-For-Tests"


@dataclass
class Site:
    services: Services
    base_url: str

    def log_in(self, secret: str) -> httpx.Client:
        """A browser-like client holding the session cookie the log-in form gave."""
        client = httpx.Client(base_url=self.base_url, timeout=30)
        form = client.get("/login")
        match = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
        assert match, form.text
        answer = client.post(
            "/login", data={"secret": secret, "login_csrf": match.group(1), "next": "/targets"}
        )
        assert answer.status_code == 303, answer.text
        assert "mw_session" in client.cookies
        return client

    def sessions(self) -> int:
        with self.services.db.session() as session:
            return int(session.scalar(select(func.count()).select_from(WebSessionRow)) or 0)


def _signed_in(client: httpx.Client) -> bool:
    page = client.get("/targets")
    if page.status_code == 303:
        assert page.headers["location"].startswith("/login"), page.headers
        return False
    assert page.status_code == 200, page.text
    return True


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    services = Services(Settings(home=tmp_path / "home"))
    services.web_auth.set_password(PASSWORD, PASSWORD)
    with APIServer(services) as server:
        yield Site(services, server.base_url)
    services.close()


def test_a_session_opened_with_a_token_ends_when_the_token_is_revoked(site: Site) -> None:
    token = site.services.tokens.create("browser-token", role=Role.ADMIN).token
    with closing(site.log_in(token)) as by_token, closing(site.log_in(PASSWORD)) as by_password:
        assert _signed_in(by_token) and _signed_in(by_password)
        site.services.tokens.revoke("browser-token")
        assert not _signed_in(by_token)
        assert _signed_in(by_password)  # the password's session does not depend on the token
    assert site.sessions() == 1  # the ended session's row is gone, not only refused


def test_a_session_opened_with_the_password_ends_when_the_password_changes(site: Site) -> None:
    with closing(site.log_in(PASSWORD)) as browser:
        assert _signed_in(browser)
        site.services.web_auth.set_password("Another-Passw0rd-2", "Another-Passw0rd-2")
        assert not _signed_in(browser)
    with closing(site.log_in("Another-Passw0rd-2")) as again:
        assert _signed_in(again)


def test_a_password_rewritten_without_signing_browsers_out_still_ends_its_sessions(site: Site) -> None:
    """The password row replaced behind the service's back (a restored backup, an older version
    of Mailwright on the same database): the sessions it had opened are not kept."""
    with closing(site.log_in(PASSWORD)) as browser:
        assert _signed_in(browser)
        with site.services.db.session() as session:
            session.execute(
                update(AppSettingRow)
                .where(AppSettingRow.key == "admin_password")
                .values(value="scrypt$AAAA$BBBB", updated_at=utcnow())
            )
        assert site.sessions() == 1
        assert not _signed_in(browser)
    assert site.sessions() == 0
