"""Small things of the web UI a daily user meets: the favicon."""

from __future__ import annotations

import httpx

from mailwright.services.app import Services
from tests.support.apiserver import APIServer


def test_every_page_names_a_favicon_and_favicon_ico_finds_it(mw: Services) -> None:
    with APIServer(mw) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        login = client.get("/login")
        assert '<link rel="icon" href="/static/favicon.svg"' in login.text
        icon = client.get("/favicon.ico", follow_redirects=True)
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        assert icon.text.startswith("<svg")
