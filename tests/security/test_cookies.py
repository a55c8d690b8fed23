"""Finding 8: `Secure` cookies decided by the settings, not the Host header; a warning for plain HTTP.

The session cookie and the log-in form's CSRF cookie are `Secure` when MAILWRIGHT_PUBLIC_URL
starts with https:// or `serve --behind-https` is given, whatever Host the request names.
`serve` on a non-loopback address over plain HTTP warns at start.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailwright.cli.serve import plain_http_warning
from mailwright.config import Settings
from mailwright.services.app import Services
from tests.support.apiserver import APIServer

MAILWRIGHT = str(Path(sys.executable).parent / "mailwright")
PASSWORD = "Cookie-Passw0rd-For-Tests"


def _cookies(response: httpx.Response) -> dict[str, SimpleCookie]:
    found: dict[str, SimpleCookie] = {}
    for header in response.headers.get_list("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        for name in jar:
            found[name] = jar
    return found


def _secure(response: httpx.Response, name: str) -> bool:
    jar = _cookies(response)[name]
    return bool(jar[name]["secure"])


def _login(base_url: str, *, host: str) -> tuple[httpx.Response, httpx.Response]:
    """The log-in form and its answer, with a chosen Host header; both raw, cookies unsent by httpx."""
    with httpx.Client(base_url=base_url, headers={"Host": host}, timeout=30) as client:
        form = client.get("/login")
        match = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
        assert match, form.text
        csrf = _cookies(form)["mw_login_csrf"]["mw_login_csrf"].value
        answer = client.post(
            "/login",
            data={"secret": PASSWORD, "login_csrf": match.group(1), "next": "/targets"},
            headers={"Cookie": f"mw_login_csrf={csrf}"},
        )
        assert answer.status_code == 303, answer.text
        return form, answer


StartApp = Callable[..., str]


@pytest.fixture
def serve_app(tmp_path: Path) -> Iterator[StartApp]:
    """Starts the app on 127.0.0.1 with the given settings; answers its base URL."""
    opened: list[tuple[Services, APIServer]] = []

    def start(**settings: Any) -> str:
        home = tmp_path / f"home{len(opened)}"
        services = Services(Settings(home=home, **settings))
        services.web_auth.set_password(PASSWORD, PASSWORD)
        server = APIServer(services).start()
        opened.append((services, server))
        return server.base_url

    yield start
    for services, server in opened:
        server.stop()
        services.close()


@pytest.mark.parametrize("host", ["mail.example.org", "localhost", "127.0.0.1"])
def test_public_https_url_makes_both_cookies_secure_whatever_the_host(serve_app: StartApp, host: str) -> None:
    base = serve_app(public_url="https://mail.example.org")
    form, answer = _login(base, host=host)
    assert _secure(form, "mw_login_csrf")
    assert _secure(answer, "mw_session")
    jar = _cookies(answer)["mw_session"]
    assert jar["mw_session"]["httponly"] and jar["mw_session"]["samesite"].lower() == "lax"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "mail.example.org"])
def test_plain_http_without_a_public_url_is_not_secure_whatever_the_host(
    serve_app: StartApp, host: str
) -> None:
    base = serve_app()
    form, answer = _login(base, host=host)
    assert not _secure(form, "mw_login_csrf")
    assert not _secure(answer, "mw_session")


def test_behind_https_setting_makes_both_cookies_secure(serve_app: StartApp) -> None:
    base = serve_app(behind_https=True, public_url="http://mail.example.org")
    form, answer = _login(base, host="mail.example.org")
    assert _secure(form, "mw_login_csrf") and _secure(answer, "mw_session")


def test_a_public_url_that_is_not_a_url_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="must start with https://"):
        Settings(public_url="mail.example.org")


@pytest.mark.parametrize(
    ("host", "warned"),
    [
        ("0.0.0.0", True),
        ("::", True),
        ("192.0.2.10", True),
        ("mail.example.org", True),
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("::1", False),
        ("[::1]", False),
        ("localhost", False),
    ],
)
def test_plain_http_warning_for_every_non_loopback_address(host: str, warned: bool) -> None:
    assert (plain_http_warning(host, https_in_front=False) is not None) is warned
    assert plain_http_warning(host, https_in_front=True) is None


# Through the real entry point. Nothing listens beyond loopback: the warned address is
# TEST-NET-1 (192.0.2.10), which this machine does not have, so binding fails after the
# warning was printed.


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    return env | {"MAILWRIGHT_HOME": str(home), **extra}


def test_serve_on_a_non_loopback_address_over_plain_http_warns(tmp_path: Path) -> None:
    run = subprocess.run(
        [MAILWRIGHT, "serve", "--host", "192.0.2.10", "--port", str(_free_port()), "--no-sandbox"],
        env=_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "warning: listening on 192.0.2.10 over plain HTTP" in run.stderr, run.stderr
    assert "MAILWRIGHT_PUBLIC_URL=https://" in run.stderr and "--behind-https" in run.stderr


def test_serve_with_https_in_front_does_not_warn(tmp_path: Path) -> None:
    for extra_args, env in (
        (["--behind-https"], {}),
        ([], {"MAILWRIGHT_PUBLIC_URL": "https://mail.example.org"}),
    ):
        run = subprocess.run(
            [
                MAILWRIGHT,
                "serve",
                "--host",
                "192.0.2.10",
                "--port",
                str(_free_port()),
                "--no-sandbox",
                *extra_args,
            ],
            env=_env(tmp_path / "home", **env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "plain HTTP" not in run.stderr + run.stdout, run.stderr


def test_serve_behind_https_sets_secure_cookies_and_loopback_does_not_warn(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [MAILWRIGHT, "serve", "--port", str(port), "--no-sandbox", "--behind-https"],
            env=_env(tmp_path / "home"),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    form = httpx.get(f"{base}/login", timeout=2)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise AssertionError(log.read_text()) from None
                    time.sleep(0.1)
            assert _secure(form, "mw_login_csrf")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert "plain HTTP" not in log.read_text()
