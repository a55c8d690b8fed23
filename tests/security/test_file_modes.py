"""Finding 7: the SQLite database and its WAL/SHM are private (0600) even when the home folder exists."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx

from mailwright.services.app import FIRST_TOKEN_FILE
from tests.security.serveproc import ServeProcess


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_wal_and_shm_are_0600_under_umask_022_in_an_existing_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)  # made beforehand, e.g. by a package or a volume mount
    with ServeProcess(home, umask=0o022) as server:
        token = (home / FIRST_TOKEN_FILE).read_text().strip()
        created = httpx.post(
            f"{server.base_url}/api/v1/account-keys",
            headers={"Authorization": f"Bearer {token}"},
            json={"name": "alice", "username": "alice@example.org", "password": "Sup3r-Secret-Pa55"},
        )
        assert created.status_code == 201, created.text
        database = home / "mailwright.db"
        files = [database, home / "mailwright.db-wal", home / "mailwright.db-shm"]
        assert all(f.exists() for f in files), sorted(p.name for p in home.iterdir())
        modes = {f.name: oct(_mode(f)) for f in files}
        assert modes == dict.fromkeys(modes, "0o600"), modes
    assert _mode(home / "secret.key") == 0o600
    assert _mode(home / FIRST_TOKEN_FILE) == 0o600
    assert "readable by others" not in server.stderr


def test_an_existing_database_readable_by_others_is_warned_about(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with ServeProcess(home):
        pass
    (home / "mailwright.db").chmod(0o644)
    with ServeProcess(home) as again:
        pass
    assert "mailwright.db is readable by others (mode 644)" in again.stderr
    assert "chmod 600" in again.stderr
