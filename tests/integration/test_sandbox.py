"""The sandbox: capture server on a free loopback port, its store on disk, and its CLI.

Mail is sent with the stdlib ``smtplib`` and with ``aiosmtplib``; the store is then
read back in-process, and the ``mailwright sandbox`` commands run through the real
console script (``tests.support.cli``) on the same data directory.
"""

from __future__ import annotations

import json
import re
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from email import policy
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from mailwright.errors import ConfigError, NotFoundError, SandboxMessageTooLargeError
from mailwright.sandbox import (
    SANDBOX_DIRECTORY_NAME,
    SANDBOX_TARGET_NAME,
    CapturedSummary,
    SandboxServer,
    SandboxStore,
)
from tests.support.cli import CLI, MAILWRIGHT, assert_error, assert_ok

pytestmark = pytest.mark.timeout(90)

TIMEOUT = 10.0
CAPTURED = re.compile(r"2\.0\.0 Ok: captured as (\d{8}-\d{6}-\d{6}-[0-9a-f]{6})")
REPORT = b"%PDF-1.4\n" + bytes(range(256)) * 8


@pytest.fixture
def store(tmp_path: Path) -> SandboxStore:
    return SandboxStore(tmp_path / "home" / SANDBOX_DIRECTORY_NAME)


@pytest.fixture
def server(store: SandboxStore) -> Iterator[SandboxServer]:
    with SandboxServer(store, port=0) as running:
        yield running


def utf8_message(*, sender: str = "Jörg <jörg@bücher.example>", to: str = "zoë@example.org") -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = "Grüße ✓ report"
    message.set_content("Hallo Zoë,\nim Anhang der Bericht.\n")
    message.add_alternative("<p>Hallo <b>Zoë</b></p>", subtype="html")
    message.add_attachment(REPORT, maintype="application", subtype="pdf", filename="bericht ü.pdf")
    return message


def plain_message(subject: str, *, size: int = 0) -> bytes:
    body = ("x" * 70 + "\r\n") * (size // 72) if size else "hello\r\n"
    return f"From: a@example.org\r\nTo: b@example.org\r\nSubject: {subject}\r\n\r\n{body}".encode()


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


def test_ehlo_offers_size_smtputf8_8bitmime_and_no_tls_or_auth(server: SandboxServer) -> None:
    assert server.port > 0
    with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as client:
        code, _ = client.ehlo("client.example")
        assert code == 250
        assert client.has_extn("smtputf8")
        assert client.has_extn("8bitmime")
        assert client.esmtp_features["size"] == str(server.store.max_bytes)
        assert not client.has_extn("starttls")
        assert not client.has_extn("auth")


def test_smtplib_utf8_message_is_stored_before_the_250_reply(
    server: SandboxServer, store: SandboxStore
) -> None:
    message = utf8_message()
    raw = message.as_bytes(policy=policy.SMTPUTF8)
    with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as client:
        client.ehlo()
        assert client.mail("jörg@bücher.example", ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250
        assert client.rcpt("zoë@example.org")[0] == 250
        assert client.rcpt("second@example.org")[0] == 250
        code, reply = client.data(raw)
        # The reply names the id, and both files exist the moment the client has it.
        assert code == 250, reply
        match = CAPTURED.fullmatch(reply.decode())
        assert match, reply
        message_id = match.group(1)
        assert (store.directory / f"{message_id}.eml").read_bytes() == raw
        assert json.loads((store.directory / f"{message_id}.json").read_text())["id"] == message_id

    captured = store.get(message_id)
    summary = captured.summary
    assert summary.mail_from == "jörg@bücher.example"
    assert summary.rcpt_tos == ("zoë@example.org", "second@example.org")
    assert summary.subject == "Grüße ✓ report"
    assert summary.size == len(raw)
    assert summary.peer.startswith("127.0.0.1:")
    assert summary.received_at.utcoffset() is not None
    assert captured.raw == raw
    assert captured.parsed.sender == "Jörg <jörg@bücher.example>"
    assert captured.parsed.text == "Hallo Zoë,\nim Anhang der Bericht.\n"
    assert captured.parsed.html == "<p>Hallo <b>Zoë</b></p>\n"
    (attachment,) = captured.parsed.attachments
    assert (attachment.filename, attachment.content_type, attachment.size) == (
        "bericht ü.pdf",
        "application/pdf",
        len(REPORT),
    )
    assert store.attachment(message_id, 0) == ("bericht ü.pdf", "application/pdf", REPORT)
    data = captured.as_dict()
    json.dumps(data)  # JSON-ready
    assert data["id"] == message_id
    assert data["parsed"]["subject"] == "Grüße ✓ report"


def test_smtplib_send_message_and_null_sender(server: SandboxServer, store: SandboxStore) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as client:
        assert client.send_message(utf8_message()) == {}
        client.sendmail("", ["bounce@example.org"], plain_message("bounce"))
    newest, oldest = store.list()
    assert (newest.mail_from, newest.subject) == ("", "bounce")
    assert oldest.subject == "Grüße ✓ report"


async def test_aiosmtplib_send_utf8_with_attachment(server: SandboxServer, store: SandboxStore) -> None:
    errors, reply = await aiosmtplib.send(
        utf8_message(), hostname=server.host, port=server.port, timeout=TIMEOUT
    )
    assert errors == {}
    match = CAPTURED.fullmatch(reply)
    assert match, reply
    captured = store.get(match.group(1))
    assert captured.summary.rcpt_tos == ("zoë@example.org",)
    assert captured.parsed.subject == "Grüße ✓ report"
    assert store.attachment(captured.id, 0)[2] == REPORT


def test_concurrent_clients_all_stored_with_distinct_ids(server: SandboxServer, store: SandboxStore) -> None:
    replies: list[str] = []
    lock = threading.Lock()

    def send(worker: int) -> None:
        with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as client:
            client.ehlo()
            for number in range(5):
                client.mail(f"w{worker}@example.org")
                client.rcpt("to@example.org")
                _, reply = client.data(plain_message(f"w{worker} n{number}"))
                with lock:
                    replies.append(reply.decode())

    threads = [threading.Thread(target=send, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    ids = {m.group(1) for m in map(CAPTURED.fullmatch, replies) if m}
    assert len(ids) == 20
    assert store.count() == 20
    assert {s.id for s in store.list()} == ids


def test_oversized_message_refused_with_552_and_not_stored(tmp_path: Path) -> None:
    small = SandboxStore(tmp_path / "small", max_bytes=2000)
    big = plain_message("big", size=5000)
    with SandboxServer(small, port=0) as server, smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as c:
        # With SIZE in MAIL FROM (smtplib adds it) the refusal comes at once...
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            c.sendmail("a@example.org", ["b@example.org"], big)
        assert refused.value.smtp_code == 552
        c.rset()
        # ...without it, after the data.
        c.mail("a@example.org")
        c.rcpt("b@example.org")
        code, reply = c.data(big)
        assert code == 552, reply
        # The connection still works for a message that fits.
        assert c.sendmail("a@example.org", ["b@example.org"], plain_message("fits")) == {}
    assert [s.subject for s in small.list()] == ["fits"]
    assert not list(small.directory.glob(".tmp-*"))
    with pytest.raises(SandboxMessageTooLargeError):
        small.add("a@example.org", ["b@example.org"], big, "test")


def test_non_loopback_address_refused(store: SandboxStore) -> None:
    for host in ("0.0.0.0", "192.0.2.10", "::"):
        with pytest.raises(ConfigError, match="loopback") as refused:
            SandboxServer(store, host=host, port=0).start()
        assert refused.value.hint
    with SandboxServer(store, host="localhost", port=0) as server:
        assert server.port > 0


def test_port_in_use_is_explained(store: SandboxStore) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as refused:
            SandboxServer(store, port=port).start()
    assert refused.value.message == (
        f"port {port} is in use: choose another with --sandbox-port or turn the sandbox off with --no-sandbox"
    )


def test_stop_closes_the_port_and_is_idempotent(store: SandboxStore) -> None:
    server = SandboxServer(store, port=0).start()
    port = server.port
    client = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)  # left open: stop() drops it
    server.stop()
    server.stop()
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    client.close()


def test_stop_lets_a_message_being_written_get_its_reply(
    store: SandboxStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing = threading.Event()
    add = store.add

    def slow_add(mail_from: str, rcpt_tos: Sequence[str], data: bytes, peer: str) -> CapturedSummary:
        writing.set()
        time.sleep(0.5)
        return add(mail_from, rcpt_tos, data, peer)

    monkeypatch.setattr(store, "add", slow_add)
    server = SandboxServer(store, port=0).start()
    replies: list[tuple[int, bytes]] = []

    def send() -> None:
        client = smtplib.SMTP(server.host, server.port, timeout=TIMEOUT)
        try:
            client.ehlo()
            client.mail("a@example.org")
            client.rcpt("b@example.org")
            replies.append(client.data(plain_message("last one")))
        finally:
            client.close()

    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert writing.wait(TIMEOUT)
    finally:
        server.stop()
        sender.join(TIMEOUT)
    assert [code for code, _ in replies] == [250]
    assert [s.subject for s in store.list()] == ["last one"]


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


def test_list_get_delete_clear(store: SandboxStore) -> None:
    assert store.list() == [] and store.count() == 0  # before the directory exists
    added = [store.add("a@example.org", ["b@example.org"], plain_message(f"n{i}"), "peer") for i in range(5)]
    assert [s.id for s in added] == sorted(s.id for s in added)  # ids sort by time

    assert [s.subject for s in store.list()] == ["n4", "n3", "n2", "n1", "n0"]
    assert [s.subject for s in store.list(limit=2, offset=1)] == ["n3", "n2"]
    assert store.count() == 5
    assert store.summary(added[0].id) == added[0]
    assert store.raw(added[1].id) == plain_message("n1")

    store.delete(added[2].id)
    with pytest.raises(NotFoundError):
        store.get(added[2].id)
    with pytest.raises(NotFoundError):
        store.delete(added[2].id)
    with pytest.raises(NotFoundError):
        store.attachment(added[0].id, 0)  # it has none

    assert store.clear() == 4
    assert store.count() == 0
    assert [p.name for p in store.directory.iterdir()] == [".changed"]  # the marker other writers watch


def test_count_cap_evicts_the_oldest(tmp_path: Path) -> None:
    capped = SandboxStore(tmp_path / "capped", max_messages=3)
    added = [capped.add("a@example.org", ["b@example.org"], plain_message(f"n{i}"), "p") for i in range(5)]
    assert [s.id for s in capped.list()] == [s.id for s in reversed(added[2:])]
    for gone in added[:2]:
        assert not (capped.directory / f"{gone.id}.eml").exists()
        assert not (capped.directory / f"{gone.id}.json").exists()


def test_size_cap_evicts_the_oldest(tmp_path: Path) -> None:
    capped = SandboxStore(tmp_path / "capped", max_bytes=1000)
    sizes = []
    for i in range(3):
        data = plain_message(f"n{i}", size=400)
        sizes.append(len(data))
        capped.add("a@example.org", ["b@example.org"], data, "p")
    assert sum(sizes[1:]) <= 1000 < sum(sizes)
    assert [s.subject for s in capped.list()] == ["n2", "n1"]
    assert capped.total_bytes() == sum(sizes[1:])
    # One message of exactly the limit pushes everything else out.
    capped.add("a@example.org", ["b@example.org"], b"x" * 1000, "p")
    assert capped.count() == 1


@pytest.mark.parametrize(
    "bad_id",
    [
        "../../etc/passwd",
        "..",
        "/etc/passwd",
        "20260124-120000-123456-3fa2c1/../../x",
        "../20260124-120000-123456-3fa2c1",
        "20260124-120000-123456-3FA2C1",
        "20260124-120000-123456-3fa2c1.json",
        "20260124-120000-123456-3fa2c1\x00",
        "",
        "x" * 5000,
    ],
)
def test_malformed_ids_are_refused(store: SandboxStore, bad_id: str) -> None:
    store.add("a@example.org", ["b@example.org"], plain_message("kept"), "p")
    outside = store.directory.parent / "secret.eml"
    outside.write_bytes(b"Subject: outside\r\n\r\nsecret")
    for call in (store.get, store.raw, store.delete, store.summary):
        with pytest.raises(NotFoundError):
            call(bad_id)
    with pytest.raises(NotFoundError):
        store.attachment(bad_id, 0)
    assert outside.exists()
    assert store.count() == 1


def test_unknown_well_formed_id_is_not_found(store: SandboxStore) -> None:
    with pytest.raises(NotFoundError, match="no captured message") as missing:
        store.get("20260124-120000-123456-3fa2c1")
    assert missing.value.hint and "sandbox list" in missing.value.hint


def test_leftovers_of_a_crash_are_ignored(store: SandboxStore) -> None:
    kept = store.add("a@example.org", ["b@example.org"], plain_message("kept"), "p")
    (store.directory / "20200101-000000-000000-aaaaaa.eml").write_bytes(b"half written")
    (store.directory / ".tmp-abc").write_bytes(b"temp")
    (store.directory / "notes.txt").write_text("unrelated")
    assert [s.id for s in store.list()] == [kept.id]
    assert store.count() == 1


def test_constant_for_the_target_name() -> None:
    assert SANDBOX_TARGET_NAME == "Local sandbox"


# --------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------


def test_cli_list_show_and_clear(cli: CLI, store: SandboxStore, server: SandboxServer) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as client:
        client.send_message(utf8_message())
        client.sendmail("ops@example.org", ["dev@example.org"], plain_message("second"))
    second, first = store.list()

    listed_json = cli.spawn("sandbox", "list", "--json")
    listed = cli.spawn("sandbox", "list")
    limited = cli.spawn("sandbox", "list", "--limit", "1", "--json")
    shown = cli.spawn("sandbox", "show", first.id)
    shown_json = cli.spawn("sandbox", "show", first.id, "--json")
    missing = cli.spawn("sandbox", "show", "20260124-120000-123456-3fa2c1")
    traversal = cli.spawn("sandbox", "show", "../../secret")
    raw = subprocess.run(
        [str(MAILWRIGHT), "sandbox", "show", first.id, "--raw"],
        env=cli.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )

    rows = assert_ok(listed_json.result()).json()
    assert [r["id"] for r in rows] == [second.id, first.id]
    assert rows[1]["mail_from"] == "jörg@bücher.example"
    assert rows[1]["rcpt_tos"] == ["zoë@example.org"]
    assert rows[1]["subject"] == "Grüße ✓ report"
    assert [r["id"] for r in assert_ok(limited.result()).json()] == [second.id]

    table = assert_ok(listed.result()).stdout
    assert first.id in table and "Grüße ✓ report" in table and "ops@example.org" in table

    text = assert_ok(shown.result()).stdout
    assert "envelope from  jörg@bücher.example" in text
    assert "envelope to    zoë@example.org" in text
    assert "Subject: Grüße ✓ report" in text
    assert "Hallo Zoë," in text
    assert "bericht ü.pdf" in text

    detail = assert_ok(shown_json.result()).json()
    assert detail["id"] == first.id
    assert detail["parsed"]["text"] == "Hallo Zoë,\nim Anhang der Bericht.\n"
    assert detail["parsed"]["attachments"][0]["sha256"]

    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == store.raw(first.id)

    assert_error(missing.result(), 2, "no captured message", "sandbox list")
    assert_error(traversal.result(), 2, "not a sandbox message id")

    refused = cli("sandbox", "clear")  # stdin is not a terminal
    assert_error(refused, 2, "--yes")
    assert store.count() == 2

    cleared = assert_ok(cli("sandbox", "clear", "--yes"))
    assert "deleted 2 captured messages" in cleared.stdout
    assert store.count() == 0
    assert assert_ok(cli("sandbox", "list", "--json")).json() == []

    # The sandbox commands never open (or create) the database.
    assert not (cli.home / "mailwright.db").exists()


def test_cli_show_refuses_raw_with_json(cli: CLI) -> None:
    assert_error(cli("sandbox", "show", "20260124-120000-123456-3fa2c1", "--raw", "--json"), 2, "--raw")


def test_cli_never_prints_terminal_escape_sequences(cli: CLI, store: SandboxStore) -> None:
    raw = (
        b"From: a@example.org\r\nSubject: =?utf-8?q?clear=1B[2Jscreen?=\r\n\r\n"
        b"body \x1b]0;pwned\x07 text\r\n\ttabbed\r\n"
    )
    captured = store.add("a\x1b[31m@example.org", ["b@example.org"], raw, "127.0.0.1:1")
    listed = cli.spawn("sandbox", "list")
    shown = assert_ok(cli("sandbox", "show", captured.id)).stdout
    table = assert_ok(listed.result()).stdout
    for output in (table, shown):
        assert "\x1b" not in output and "\x07" not in output
    assert "clear\ufffd[2Jscreen" in shown
    assert "body \ufffd]0;pwned\ufffd text\n\ttabbed" in shown


def test_clearing_a_sandbox_that_never_captured_is_a_no_op(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path / "never-made")
    assert store.clear() == 0 and not (tmp_path / "never-made").exists()
