"""Finding 11: the first-start admin token goes to a 0600 file, not to stdout (journald, container logs)."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx

from mailwright.services.app import FIRST_TOKEN_FILE
from tests.security.serveproc import ServeProcess


def test_first_start_token_is_written_to_a_private_file_and_not_printed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with ServeProcess(home) as server:
        token_file = home / FIRST_TOKEN_FILE
        token = token_file.read_text().strip()
        assert token.startswith("mw_")
        answer = httpx.get(f"{server.base_url}/api/v1/targets", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    printed = server.stdout + server.stderr
    assert token not in printed
    assert token[:10] not in printed
    assert str(token_file) in server.stdout  # only its path is shown
    # A second start creates nothing and prints nothing about a token.
    with ServeProcess(home) as again:
        pass
    assert "First start" not in again.stdout and "mw_" not in again.stdout + again.stderr


def test_print_token_shows_it_on_first_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with ServeProcess(home, "--print-token") as server:
        pass
    token = (home / FIRST_TOKEN_FILE).read_text().strip()
    assert token in server.stdout
