"""`mailwright serve` through the real entry point: first-start token, API, restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.ports import free_port

MAILWRIGHT = str(Path(sys.executable).parent / "mailwright")


def _serve(home: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    env["MAILWRIGHT_HOME"] = str(home)
    proc = subprocess.Popen(
        [MAILWRIGHT, "serve", "--port", str(port), "--sandbox-port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError(f"serve did not start: {proc.communicate()[0]}")
    return proc, f"http://127.0.0.1:{port}"


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=15)
    return out


def test_first_start_writes_an_admin_token_to_a_private_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc, base = _serve(home, free_port())
    try:
        assert httpx.get(f"{base}/api/v1/targets").status_code == 401
        assert httpx.get(f"{base}/api/openapi.json").json()["info"]["title"] == "Mailwright"
    finally:
        first = _stop(proc)
    # The token is written to a private file in the home folder; stdout names the file only.
    token = (home / "first-admin-token").read_text().strip()
    assert token.startswith("mw_") and token not in first
    assert str(home / "first-admin-token") in first
    proc, base = _serve(home, free_port())
    try:
        listed = httpx.get(f"{base}/api/v1/targets", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200
        # The first start created the Local sandbox target, pointing at the capture server.
        (sandbox,) = listed.json()
        assert sandbox["display_name"] == "Local sandbox" and sandbox["server"] == "127.0.0.1"
    finally:
        second = _stop(proc)
    assert "mw_" not in second
    assert (home / "mailwright.db").exists()
    assert oct((home / "secret.key").stat().st_mode & 0o777) == "0o600"
