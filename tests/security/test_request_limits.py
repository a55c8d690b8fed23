"""Finding 3: bounded requests, and no body read before the token check.

A real `mailwright serve` process on 127.0.0.1; its memory is read from
/proc/PID/status (VmHWM, the peak resident set) around each probe. The probes'
bodies come from generators, so the test never holds them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mailwright.config import Settings
from mailwright.services.app import Services

MAILWRIGHT = str(Path(sys.executable).parent / "mailwright")
MIB = 1024 * 1024
PROBE_BYTES = 200 * MIB
LIMIT = 1 * MIB
BATCH_LIMIT = 4 * MIB
# A server that reads a 200 MB body grows by far more than this (the issue saw +554 MB).
MEMORY_SLACK = 48 * MIB


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    token: str

    def hwm(self) -> int:
        """The process's peak resident set so far, in bytes."""
        return _status_kib(self.proc.pid, "VmHWM") * 1024

    def rss(self) -> int:
        return _status_kib(self.proc.pid, "VmRSS") * 1024


def _zeros(total: int, chunk: int = MIB) -> Iterator[bytes]:
    block = b"0" * chunk
    sent = 0
    while sent < total:
        part = block[: min(chunk, total - sent)]
        sent += len(part)
        yield part


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("limits") / "home"
    services = Services(Settings(home=home))
    token = services.tokens.create("probe").token
    services.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    env |= {
        "MAILWRIGHT_HOME": str(home),
        "MAILWRIGHT_MAX_REQUEST_BYTES": str(LIMIT),
        "MAILWRIGHT_MAX_BATCH_REQUEST_BYTES": str(BATCH_LIMIT),
    }
    port = _free_port()
    log = (home / "serve.log").open("wb")
    proc = subprocess.Popen(
        [MAILWRIGHT, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-sandbox"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"serve did not start: {(home / 'serve.log').read_text()}")
        time.sleep(0.1)
    running = Server(proc, base, token)
    # Warm up the paths the probes take (imports, the database, the token check).
    auth = {"Authorization": f"Bearer {token}"}
    httpx.post(f"{base}/api/v1/send-email", json={}, headers=auth, timeout=30)
    httpx.post(f"{base}/api/v1/send-email", json={}, timeout=30)
    yield running
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _post(
    server: Server,
    path: str,
    *,
    body: Iterator[bytes],
    length: int | None,
    token: str | None,
    content_type: str = "application/json",
) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if length is not None:
        headers["Content-Length"] = str(length)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    with httpx.Client(timeout=120) as client:
        return client.post(f"{server.base_url}{path}", content=body, headers=headers)


def test_200_mb_without_a_token_is_refused_before_the_body_is_read(server: Server) -> None:
    before = server.hwm()
    refused = _post(server, "/api/v1/send-email", body=_zeros(PROBE_BYTES), length=PROBE_BYTES, token=None)
    print(f"no token, 200 MB declared: VmHWM {before / MIB:.0f} -> {server.hwm() / MIB:.0f} MiB")
    assert refused.status_code == 401, refused.text
    assert "Authorization: Bearer TOKEN" in refused.json()["error"]["message"]
    grown = server.hwm() - before
    assert grown < MEMORY_SLACK, f"the server grew by {grown / MIB:.0f} MiB while refusing the body"


def test_200_mb_chunked_with_a_bad_token_is_refused_before_the_body_is_read(server: Server) -> None:
    before = server.hwm()
    refused = _post(
        server, "/api/v1/send-email", body=_zeros(PROBE_BYTES), length=None, token="mw_not-a-token"
    )
    print(f"bad token, 200 MB chunked: VmHWM {before / MIB:.0f} -> {server.hwm() / MIB:.0f} MiB")
    assert refused.status_code == 401, refused.text
    assert "unknown or revoked" in refused.json()["error"]["message"]
    assert server.hwm() - before < MEMORY_SLACK


def test_a_declared_length_over_the_limit_is_413_naming_the_limit_and_setting(server: Server) -> None:
    before = server.hwm()
    refused = _post(
        server, "/api/v1/send-email", body=_zeros(PROBE_BYTES), length=PROBE_BYTES, token=server.token
    )
    print(f"token, 200 MB declared: VmHWM {before / MIB:.0f} -> {server.hwm() / MIB:.0f} MiB")
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert error["code"] == "request_too_large"
    assert error["limit"] == LIMIT and error["setting"] == "MAILWRIGHT_MAX_REQUEST_BYTES"
    assert "209715200 bytes" in error["message"] and f"at most {LIMIT} bytes" in error["message"]
    assert "MAILWRIGHT_MAX_REQUEST_BYTES" in error["hint"]
    assert server.hwm() - before < MEMORY_SLACK


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(server: Server) -> None:
    before = server.hwm()
    refused = _post(server, "/api/v1/send-email", body=_zeros(PROBE_BYTES), length=None, token=server.token)
    print(f"token, 200 MB chunked: VmHWM {before / MIB:.0f} -> {server.hwm() / MIB:.0f} MiB")
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert error["setting"] == "MAILWRIGHT_MAX_REQUEST_BYTES" and error["limit"] == LIMIT
    assert "passed the limit" in error["message"]
    assert server.hwm() - before < MEMORY_SLACK


def test_the_batch_endpoint_has_its_own_larger_limit(server: Server) -> None:
    size = 2 * MIB  # over the general limit, under the batch limit
    single = _post(server, "/api/v1/send-email", body=_zeros(size), length=size, token=server.token)
    assert single.status_code == 413
    batch = _post(server, "/api/v1/send-email/batch", body=_zeros(size), length=size, token=server.token)
    assert batch.status_code == 422, batch.text  # read, and refused only as bad JSON
    over = _post(server, "/api/v1/send-email/batch", body=_zeros(8 * MIB), length=None, token=server.token)
    assert over.status_code == 413
    error = over.json()["error"]
    assert error["setting"] == "MAILWRIGHT_MAX_BATCH_REQUEST_BYTES" and error["limit"] == BATCH_LIMIT
    assert "split the batch" in error["hint"]


def test_small_requests_and_pages_are_untouched(server: Server) -> None:
    auth = {"Authorization": f"Bearer {server.token}"}
    listed = httpx.get(f"{server.base_url}/api/v1/targets", headers=auth, timeout=30)
    assert listed.status_code == 200
    assert httpx.get(f"{server.base_url}/api/v1/targets", timeout=30).status_code == 401
    bad = httpx.post(f"{server.base_url}/api/v1/send-email", json={"to": []}, headers=auth, timeout=30)
    assert bad.status_code == 422
    # A page's form over the limit: 413 as well (the limit is not only the API's).
    form = "application/x-www-form-urlencoded"
    page = _post(server, "/login", body=_zeros(2 * MIB), length=None, token=None, content_type=form)
    assert page.status_code == 413
