"""Proves tests/support/counting_smtp.py with smtplib, aiosmtplib and raw sockets.

Every client call has a timeout; waits on the server's log are bounded polls.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from pydantic import ValidationError

from tests.support.counting_smtp import (
    REPO_ROOT,
    CountingLog,
    CountingSMTPProcess,
    CountingSMTPServer,
    FaultPlan,
    Pick,
    RcptDefer,
    SlowReply,
    build_parser,
    message_id_of,
    plan_from_args,
    write_faults,
)

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 10.0
SENDER = "sender@example.org"
RCPT = "rcpt@example.net"


def message(message_id: str, *, body: str = "Hello\r\n.a line that starts with a dot\r\n") -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: test\r\nMessage-ID: {message_id}\r\n\r\n{body}"
    ).encode()


def client(port: int, timeout: float = TIMEOUT) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=timeout)


def send_one(port: int, message_id: str, recipients: list[str] | None = None) -> str:
    """One message on a new connection: "ok", "refused: ..." or the exception's class name."""
    try:
        with client(port) as smtp:
            refused = smtp.sendmail(SENDER, recipients or [RCPT], message(message_id))
    except (smtplib.SMTPException, OSError) as exc:
        return type(exc).__name__
    return f"refused: {sorted(refused)}" if refused else "ok"


class Raw:
    """A bare socket, to write pipelined commands in one packet and read replies as they come."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buffer = b""

    def replies(self, count: int) -> list[str]:
        """The next ``count`` complete replies (a multi-line reply counts once)."""
        found: list[str] = []
        while len(found) < count:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {found}")
                self.buffer += chunk
                continue
            line, self.buffer = self.buffer[:end].decode(), self.buffer[end + 2 :]
            if line[3:4] != "-":
                found.append(line)
        return found

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CountingSMTPServer]:
    with CountingSMTPServer(tmp_path / "smtp") as running:
        yield running


# --- counting --------------------------------------------------------------------------


def test_counts_every_message_with_its_envelope_and_connection(server: CountingSMTPServer) -> None:
    with client(server.port) as smtp:
        smtp.ehlo()
        for extension in ("pipelining", "8bitmime", "smtputf8", "size"):
            assert smtp.has_extn(extension), extension
        smtp.sendmail(SENDER, [RCPT, "second@example.net"], message("<a@test>"))
        smtp.sendmail(SENDER, [RCPT], message("<b@test>", body="Gr\u00fc\u00dfe\r\n"))
        smtp.sendmail(
            SENDER,
            [RCPT],
            message("<8bit@test>").replace(b"Hello", "h\u00e9llo".encode()),
            mail_options=["BODY=8BITMIME"],
        )
    with client(server.port) as smtp:
        smtp.sendmail(SENDER, [RCPT], message("<a@test>"))
        smtp.sendmail(SENDER, [RCPT], b"Subject: no id\r\n\r\nbody\r\n")

    log = server.log
    assert log.total() == 5
    assert log.counts() == {"<a@test>": 2, "<b@test>": 1, "<8bit@test>": 1, "": 1}
    assert log.duplicates() == {"<a@test>": 2}  # "" (no Message-ID) is never a duplicate
    records = log.messages()
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert [r.connection for r in records] == [1, 1, 1, 2, 2]
    assert records[0].rcpt_tos == (RCPT, "second@example.net")
    assert records[0].mail_from == SENDER
    assert records[0].size == len(message("<a@test>"))  # dot-unstuffed: the size the client meant
    assert len({r.server for r in records}) == 1
    assert all(r.fault is None for r in records)
    assert log.recipients()[RCPT] == 5


def test_a_new_reader_and_a_restarted_server_see_the_same_log(tmp_path: Path) -> None:
    directory = tmp_path / "smtp"
    server = CountingSMTPServer(directory).start()
    try:
        assert send_one(server.port, "<one@test>") == "ok"
        port = server.port
        server.stop()
        server.start()  # the same port and directory: the log goes on
        assert server.port == port
        assert send_one(server.port, "<one@test>") == "ok"
    finally:
        server.stop()
    log = CountingLog(directory)
    assert log.duplicates() == {"<one@test>": 2}
    assert len({record.server for record in log.messages()}) == 2


def test_pipelined_commands_are_answered_in_order_and_together(server: CountingSMTPServer) -> None:
    raw = Raw(server.port)
    try:
        assert raw.replies(1)[0].startswith("220")
        raw.send(b"EHLO client.test\r\n")
        assert raw.replies(1)[0].startswith("250 ")
        raw.send(b"MAIL FROM:<a@test> BODY=8BITMIME\r\nRCPT TO:<b@test>\r\nRCPT TO:<c@test>\r\nDATA\r\n")
        assert [r[:3] for r in raw.replies(4)] == ["250", "250", "250", "354"]
        # The body, its final dot and the next transaction in one write, as Mailwright sends them.
        raw.send(
            b"Message-ID: <p1@test>\r\n\r\n\xc3\xa9t\xc3\xa9\r\n.\r\n"
            b"MAIL FROM:<a@test>\r\nRCPT TO:<d@test>\r\nDATA\r\n"
        )
        assert [r[:3] for r in raw.replies(4)] == ["250", "250", "250", "354"]
        raw.send(b"Message-ID: <p2@test>\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        assert [r[:3] for r in raw.replies(2)] == ["250", "221"]
    finally:
        raw.close()
    records = server.log.messages()
    assert [(r.message_id, r.rcpt_tos) for r in records] == [
        ("<p1@test>", ("b@test", "c@test")),
        ("<p2@test>", ("d@test",)),
    ]


async def test_many_concurrent_connections_are_each_counted_once(server: CountingSMTPServer) -> None:
    async def connection(number: int) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=TIMEOUT)
        async with smtp:
            for index in range(10):
                mail = EmailMessage()
                mail["From"], mail["To"], mail["Subject"] = SENDER, RCPT, "concurrent"
                mail["Message-ID"] = f"<c{number}-{index}@test>"
                mail.set_content("body")
                await smtp.send_message(mail)

    await asyncio.gather(*(connection(number) for number in range(20)))
    log = server.log
    assert log.total() == 200
    assert len(log.counts()) == 200
    assert [r.seq for r in log.messages()] == list(range(1, 201))  # file order is storing order


def test_message_id_of_unfolds_and_ignores_the_body() -> None:
    assert message_id_of(b"Subject: x\r\nMessage-ID:\r\n <folded@test>\r\n\r\nMessage-ID: <no>\r\n") == (
        "<folded@test>"
    )
    assert message_id_of(b"Subject: x\r\n\r\nMessage-ID: <in-body@test>\r\n") == ""


# --- fault: dropped connections ----------------------------------------------------------


def test_drop_after_store_counts_the_message_the_client_thinks_was_lost(server: CountingSMTPServer) -> None:
    server.set_faults(FaultPlan(drop_after_store=Pick()))
    with client(server.port) as smtp, pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.sendmail(SENDER, [RCPT], message("<unknown@test>"))
    log = server.log
    assert log.counts() == {"<unknown@test>": 1}
    assert log.messages()[0].fault == "drop_after_store"
    assert [e.message_id for e in log.events("drop_after_store")] == ["<unknown@test>"]

    # A sender that resends after the unknown outcome makes the duplicate the log shows.
    server.set_faults(FaultPlan())
    assert send_one(server.port, "<unknown@test>") == "ok"
    assert log.duplicates() == {"<unknown@test>": 2}


def test_drop_before_store_every_nth_message_stores_nothing_for_it(server: CountingSMTPServer) -> None:
    server.set_faults(FaultPlan(drop_before_store=Pick(every=2)))
    outcomes = [send_one(server.port, f"<m{i}@test>") for i in range(1, 5)]
    assert outcomes == ["ok", "SMTPServerDisconnected", "ok", "SMTPServerDisconnected"]
    log = server.log
    assert log.counts() == {"<m1@test>": 1, "<m3@test>": 1}
    assert [e.message_id for e in log.events("drop_before_store")] == ["<m2@test>", "<m4@test>"]


def test_an_aiosmtplib_client_sees_the_drop_as_a_disconnect(server: CountingSMTPServer) -> None:
    server.set_faults(FaultPlan(drop_after_store=Pick()))

    async def send() -> None:
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Message-ID"] = SENDER, RCPT, "<aio@test>"
        mail.set_content("body")
        await aiosmtplib.send(mail, hostname="127.0.0.1", port=server.port, timeout=TIMEOUT)

    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        asyncio.run(send())
    assert server.log.counts() == {"<aio@test>": 1}


def test_a_fraction_with_a_seed_drops_the_same_messages_every_run(tmp_path: Path) -> None:
    def run(name: str, seed: int) -> list[str]:
        plan = FaultPlan(drop_after_store=Pick(fraction=0.5), seed=seed)
        with CountingSMTPServer(tmp_path / name, faults=plan) as server:
            outcomes = [send_one(server.port, f"<f{i}@test>") for i in range(24)]
            assert server.log.total() == 24  # dropped after the store: every one is counted
        return outcomes

    first, again = run("first", 7), run("again", 7)
    assert first == again
    assert 0 < first.count("SMTPServerDisconnected") < 24


def test_a_limit_stops_the_fault_after_that_many_hits(server: CountingSMTPServer) -> None:
    server.set_faults(FaultPlan(drop_before_store=Pick(limit=2)))
    outcomes = [send_one(server.port, f"<l{i}@test>") for i in range(4)]
    assert outcomes == ["SMTPServerDisconnected", "SMTPServerDisconnected", "ok", "ok"]


# --- fault: 4xx at RCPT ------------------------------------------------------------------


def test_a_recipient_deferred_its_first_k_times_is_then_accepted(server: CountingSMTPServer) -> None:
    slow = "Slow@Example.net"
    server.set_faults(FaultPlan(rcpt_defer=RcptDefer(addresses=(slow.lower(),), times=2)))
    outcomes = [send_one(server.port, f"<k{i}@test>", [slow, RCPT]) for i in range(3)]
    assert outcomes == [f"refused: {[slow]}", f"refused: {[slow]}", "ok"]
    log = server.log
    assert log.recipients() == {RCPT: 3, slow: 1}
    assert [e.recipient for e in log.events("rcpt_defer")] == [slow, slow]


def test_a_persistent_deferral_by_fraction_hits_the_same_recipients_every_time(
    server: CountingSMTPServer,
) -> None:
    server.set_faults(FaultPlan(rcpt_defer=RcptDefer(fraction=0.5), seed=3))
    addresses = [f"user{i}@example.net" for i in range(40)]

    def deferred() -> set[str]:
        with client(server.port) as smtp:
            smtp.ehlo()
            found = set()
            for address in addresses:
                smtp.mail(SENDER)
                code, text = smtp.rcpt(address)
                if code == 451:
                    assert text.startswith(b"4.3.0")
                    found.add(address)
                else:
                    assert code == 250
                smtp.rset()
            return found

    first = deferred()
    assert 5 < len(first) < 35
    assert deferred() == first


def test_every_recipient_deferred_makes_data_fail(server: CountingSMTPServer) -> None:
    server.set_faults(FaultPlan(rcpt_defer=RcptDefer(fraction=1.0, reply="450 4.2.0 mailbox busy")))
    with client(server.port) as smtp, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        smtp.sendmail(SENDER, [RCPT], message("<none@test>"))
    assert refused.value.recipients == {RCPT: (450, b"4.2.0 mailbox busy")}
    assert server.log.total() == 0


# --- fault: slow final reply and reply delay -----------------------------------------------


async def test_a_client_that_gives_up_on_a_slow_reply_was_still_counted(server: CountingSMTPServer) -> None:
    server.set_faults(FaultPlan(slow_reply=SlowReply(seconds=3.0)))
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Message-ID"] = SENDER, RCPT, "<slow@test>"
    mail.set_content("body")
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await aiosmtplib.send(mail, hostname="127.0.0.1", port=server.port, timeout=0.5)
    log = server.log
    assert log.counts() == {"<slow@test>": 1}
    assert log.messages()[0].fault == "slow_reply"


def test_a_patient_client_gets_the_slow_reply(server: CountingSMTPServer) -> None:
    server.set_faults(FaultPlan(slow_reply=SlowReply(seconds=0.5, every=2)))
    started = time.monotonic()
    assert send_one(server.port, "<quick@test>") == "ok"
    quick = time.monotonic() - started
    started = time.monotonic()
    assert send_one(server.port, "<patient@test>") == "ok"
    assert time.monotonic() - started >= 0.5 > quick


def test_a_reply_delay_delays_each_reply_but_answers_a_pipelined_group_together(
    server: CountingSMTPServer,
) -> None:
    delay = 1.0  # long enough that a loaded machine cannot blur one delay into four
    server.set_faults(FaultPlan(reply_delay=delay))
    started = time.monotonic()
    raw = Raw(server.port)
    try:
        raw.replies(1)
        assert time.monotonic() - started >= delay  # the greeting too
        started = time.monotonic()
        raw.send(b"EHLO client.test\r\n")
        raw.replies(1)
        assert time.monotonic() - started >= delay
        started = time.monotonic()
        raw.send(b"MAIL FROM:<a@test>\r\nRCPT TO:<b@test>\r\nRCPT TO:<c@test>\r\nDATA\r\n")
        assert [r[:3] for r in raw.replies(4)] == ["250", "250", "250", "354"]
        elapsed = time.monotonic() - started
        assert delay <= elapsed < 3.5 * delay  # one delay for the group, not one per command (4x)
    finally:
        raw.close()


# --- changing faults while running ---------------------------------------------------------


def test_a_watched_faults_file_changes_the_plan_and_its_removal_restores_the_first(tmp_path: Path) -> None:
    faults_file = tmp_path / "faults.json"
    with CountingSMTPServer(tmp_path / "smtp", faults_file=faults_file) as server:
        assert send_one(server.port, "<w1@test>") == "ok"
        write_faults(faults_file, FaultPlan(drop_before_store=Pick()))
        assert send_one(server.port, "<w2@test>") == "SMTPServerDisconnected"
        faults_file.unlink()
        assert send_one(server.port, "<w3@test>") == "ok"
        assert server.log.counts() == {"<w1@test>": 1, "<w3@test>": 1}
        assert len(server.log.events("plan")) == 2  # the file's plan, then the first one again


def test_plans_are_validated() -> None:
    with pytest.raises(ValidationError, match="not both"):
        Pick(every=2, fraction=0.5)
    with pytest.raises(ValidationError, match="4xx or 5xx"):
        RcptDefer(reply="250 fine")
    with pytest.raises(ValidationError):
        FaultPlan.model_validate_json('{"drop_after_store": {"every": 0}}')


def test_command_line_flags_build_the_plan(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            *("--dir", str(tmp_path), "--drop-after-store-every", "5", "--drop-limit", "2"),
            *("--defer-rcpt", "a@test", "--defer-rcpt-times", "1", "--slow-reply", "2.5"),
            *("--reply-delay", "0.02", "--seed", "9"),
            *("--faults", '{"drop_before_store": {"fraction": 0.1}}'),
        ]
    )
    assert plan_from_args(args) == FaultPlan(
        drop_before_store=Pick(fraction=0.1, limit=None),
        drop_after_store=Pick(every=5, limit=2),
        rcpt_defer=RcptDefer(addresses=("a@test",), times=1),
        slow_reply=SlowReply(seconds=2.5),
        reply_delay=0.02,
        seed=9,
    )


# --- subprocess mode -----------------------------------------------------------------------


def count_in_another_process(directory: Path) -> dict[str, int]:
    code = (
        "import json, sys; from tests.support.counting_smtp import CountingLog; "
        "print(json.dumps(CountingLog(sys.argv[1]).counts()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(directory)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    counts: dict[str, int] = json.loads(done.stdout)
    return counts


def test_subprocess_mode_counts_across_faults_changes_readers_and_restarts(tmp_path: Path) -> None:
    directory = tmp_path / "smtp"
    port_file = tmp_path / "port"
    process = CountingSMTPProcess(
        directory, args=["--drop-after-store-every", "3", "--port-file", str(port_file)]
    )
    with process:
        assert port_file.read_text().strip() == str(process.port)  # printed and written: the same port
        outcomes = [send_one(process.port, f"<s{i}@test>") for i in range(1, 7)]
        assert outcomes == ["ok", "ok", "SMTPServerDisconnected"] * 2
        # Changed while running: every command read after the file was replaced sees the new plan.
        process.set_faults(FaultPlan(rcpt_defer=RcptDefer(addresses=("busy@test",))))
        assert send_one(process.port, "<s7@test>", ["busy@test"]) == "SMTPRecipientsRefused"
        assert send_one(process.port, "<s8@test>") == "ok"  # the drop is gone with the old plan
        expected = {f"<s{i}@test>": 1 for i in (1, 2, 3, 4, 5, 6, 8)}
        assert count_in_another_process(directory) == expected  # read while the server runs

    assert CountingLog(directory).counts() == expected  # a new reader, the server stopped
    with CountingSMTPProcess(directory) as restarted:
        assert send_one(restarted.port, "<s9@test>", ["busy@test"]) == "SMTPRecipientsRefused"  # faults.json
        restarted.set_faults(FaultPlan())
        assert send_one(restarted.port, "<s8@test>") == "ok"
    log = CountingLog(directory)
    assert log.duplicates() == {"<s8@test>": 2}
    assert len({record.server for record in log.messages()}) == 2


def test_subprocess_mode_refuses_bad_fault_flags(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="did not start"):
        CountingSMTPProcess(tmp_path, args=["--drop-after-store-fraction", "2"]).start()
