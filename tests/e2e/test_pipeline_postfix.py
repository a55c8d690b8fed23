"""Pipelined sends through the connection pool against real Postfix and Postfix's smtp-sink."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwright.services.app import Services
from mailwright.services.sending import SendEmailRequest, build_outgoing, deliver, resolve_sender
from mailwright.services.targets import TargetCreate
from tests.e2e.test_send_e2e import mailbox, make_target
from tests.support.mailstack import MailStack
from tests.support.ports import free_port

SMTP_SINK = "/usr/sbin/smtp-sink"
COUNT = 200


def request(target: str, to: str, number: int) -> SendEmailRequest:
    return SendEmailRequest.model_validate(
        {
            "target": target,
            "from": "pool@example.org",
            "to": [to],
            "subject": f"pooled {number}",
            "body": f"message {number}\n" + "Lorem ipsum dolor sit amet.\n" * 150,
        }
    )


async def test_pool_delivers_200_messages_through_postfix(mw: Services, mailstack: MailStack) -> None:
    sender = mailbox(mailstack)
    to, _password = mailbox(mailstack)
    target = make_target(
        mw,
        mailstack,
        port=mailstack.submission_port,
        security="starttls",
        login=sender,
        max_connections=4,
        max_messages_per_connection=60,
    )
    results = await asyncio.gather(
        *(mw.sending.send(request(target.display_name, to, n)) for n in range(COUNT))
    )
    assert all(r.status == "sent" and r.server_reply.code == 250 for r in results)
    messages = await asyncio.to_thread(mailstack.wait_for_maildir, to, COUNT, 90.0)
    assert len(messages) == COUNT  # none lost, none doubled
    subjects = sorted(
        int(line.split()[-1])
        for m in messages
        for line in m.splitlines()
        if line.startswith(b"Subject: pooled")
    )
    assert subjects == list(range(COUNT))
    (pool,) = mw.pools.pools()
    assert (await pool.capabilities()).pipelining  # Postfix offers PIPELINING: the fast path ran
    assert pool.opened >= COUNT // 60  # connections were replaced after 60 messages
    await mw.aclose()


def _start_sink(dump: Path, *options: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    process = subprocess.Popen(
        [SMTP_SINK, "-u", user, "-d", f"{dump}/%H%M%S.", *options, f"127.0.0.1:{port}", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail("smtp-sink did not start listening")


@pytest.fixture(params=["pipelining", "lock-step"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if not Path(SMTP_SINK).exists():
        pytest.fail(f"{SMTP_SINK} not found: run `bash scripts/install-system-deps.sh`", pytrace=False)
    dump = tmp_path / "sink"
    dump.mkdir()
    os.chmod(dump, 0o777)
    options = ["-p"] if request.param == "lock-step" else []
    process, port = _start_sink(dump, *options)
    try:
        yield port, dump
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def test_pool_delivers_200_messages_to_smtp_sink(mw: Services, sink: tuple[int, Path]) -> None:
    port, dump = sink
    target = mw.targets.create(
        TargetCreate(
            display_name=f"sink {uuid.uuid4().hex[:6]}",
            server="127.0.0.1",
            port=port,
            security="none",
            no_account_keys=True,
            max_connections=8,
            command_timeout=20,
        )
    )
    resolved = mw.targets.resolve(target.display_name, account_key=None)
    messages = []
    for n in range(COUNT):
        req = request(target.display_name, "sink@example.net", n)
        messages.append(build_outgoing(req, resolve_sender(req, resolved)))
    results = await asyncio.gather(
        *(deliver(m, resolved, continue_if_one_address_valid=False) for m in messages)
    )
    assert all(r.status == "sent" for r in results)
    deadline = time.monotonic() + 20
    while len(files := list(dump.iterdir())) < COUNT and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(files) == COUNT
    dumped = b"".join(path.read_bytes() for path in files)
    assert sorted(r.message_id.encode() in dumped for r in results) == [True] * COUNT
    (pool,) = mw.pools.pools()
    assert pool.opened <= 8
    await mw.aclose()
