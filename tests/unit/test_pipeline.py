"""The pipelined SMTP exchange: wire format, reply parsing, batching and exact per-recipient results."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwright import errors
from mailwright.domain.smtp import Security
from mailwright.transport.pipeline import Job, ReplyProtocol, Session, wire_body
from mailwright.transport.smtp import Delivery, SMTPConnection, SMTPEndpoint
from tests.support.pipeserver import PipeServer

BODY = b"Subject: hi\r\n\r\nline one\r\n.starts with a dot\r\n"


def unstuff(wire: bytes) -> bytes:
    assert wire.endswith(b"\r\n.\r\n")
    body = wire[:-3]
    if body.startswith(b".."):
        body = body[1:]
    return body.replace(b"\r\n..", b"\r\n.")


# --- wire format ------------------------------------------------------------------------


def test_wire_body_stuffs_dots_and_terminates() -> None:
    wire = wire_body(b".leading\r\nmiddle\r\n.dot\r\n..two\r\n")
    assert wire == b"..leading\r\nmiddle\r\n..dot\r\n...two\r\n.\r\n"


def test_wire_body_normalises_bare_line_ends() -> None:
    assert wire_body(b"a\nb\rc") == b"a\r\nb\r\nc\r\n.\r\n"


@given(st.lists(st.text(alphabet=".ab \r\n", max_size=12), max_size=8))
def test_wire_body_round_trips(lines: list[str]) -> None:
    data = "\r\n".join(line.replace("\r", "").replace("\n", "") for line in lines).encode()
    wire = wire_body(data)
    expected = data if data.endswith(b"\r\n") else data + b"\r\n"
    assert unstuff(wire) == expected
    assert wire.find(b"\r\n.\r\n") == len(wire) - 5  # the only end of data is the real one


# --- reply parsing ------------------------------------------------------------------------


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


async def test_replies_split_across_reads_and_multiline() -> None:
    protocol = ReplyProtocol(_FakeTransport())
    assert protocol.write(b"EHLO x\r\nNOOP\r\n", replies=2)
    protocol.data_received(b"250-first\r\n250-sec")
    protocol.data_received(b"ond\r\n250 third\r\n2")
    protocol.data_received(b"50 ok\r\n")
    replies, failure = await protocol.read(2, timeout=1)
    assert failure is None
    assert [(r.code, r.text) for r in replies] == [(250, "first\nsecond\nthird"), (250, "ok")]


async def test_unsolicited_reply_makes_the_connection_unusable() -> None:
    protocol = ReplyProtocol(_FakeTransport())
    protocol.data_received(b"421 4.4.2 idle too long\r\n")
    assert not protocol.usable
    assert not protocol.write(b"MAIL FROM:<a@b>\r\n", replies=1)


async def test_garbage_aborts_and_a_missing_reply_times_out() -> None:
    transport = _FakeTransport()
    protocol = ReplyProtocol(transport)
    protocol.write(b"NOOP\r\n", replies=1)
    replies, failure = await protocol.read(1, timeout=0.05)
    assert replies == [] and failure is not None and failure.value == "timeout"
    assert transport.aborted
    other = _FakeTransport()
    ReplyProtocol(other).data_received(b"hello there\r\n")
    assert other.aborted


# --- sessions against a recording server ---------------------------------------------------


def endpoint(server: PipeServer, *, timeout: float = 5.0) -> SMTPEndpoint:
    return SMTPEndpoint(
        target_name="pipe",
        host=server.host,
        port=server.port,
        security=Security.NONE,
        ssl_context=ssl.create_default_context(),
        starttls_required=False,
        command_timeout=timeout,
    )


async def open_session(server: PipeServer, *, timeout: float = 5.0) -> Session:
    connection = SMTPConnection(endpoint(server, timeout=timeout))
    await connection.open(None)
    return Session(connection)


def job(
    *recipients: str,
    data: bytes = BODY,
    partial: bool = False,
    sender: str = "ops@example.org",
) -> Job:
    return Job(
        sender=sender,
        recipients=[(r, not r.isascii()) for r in recipients],
        data=data,
        smtputf8=False,
        continue_if_one_address_valid=partial,
        before_data=None,
        future=asyncio.get_running_loop().create_future(),
    )


@pytest.fixture
async def server() -> AsyncIterator[PipeServer]:
    started = await PipeServer(
        refuse={"nobody@example.net": (550, "5.1.1 no such user"), "busy@example.net": (450, "4.2.1 busy")}
    ).start()
    yield started
    await started.close()


def transaction_reads(server: PipeServer, connection: int = 1) -> list[bytes]:
    """What the connection sent after EHLO, one entry per read of the server."""
    return [chunk for chunk in server.reads[connection] if not chunk.startswith((b"EHLO", b"QUIT"))]


async def test_mail_rcpt_data_go_in_one_write(server: PipeServer) -> None:
    session = await open_session(server)
    one = job("bob@example.net")
    assert await session.run(one, lambda: None, max_transactions=100) == []
    delivery = await one.future
    assert delivery.code == 250 and delivery.size == len(BODY)
    reads = transaction_reads(server)
    assert reads[0] == b"MAIL FROM:<ops@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
    assert reads[1] == wire_body(BODY)
    (stored,) = server.messages
    assert stored.content == BODY and stored.rcpt_tos == ["bob@example.net"]
    await session.quit()


async def test_next_envelope_rides_with_the_previous_body(server: PipeServer) -> None:
    session = await open_session(server)
    queue = [job("carol@example.net"), job("dave@example.net")]
    first = job("bob@example.net")
    await session.run(first, lambda: queue.pop(0) if queue else None, max_transactions=100)
    reads = transaction_reads(server)
    assert (
        reads[1]
        == wire_body(BODY) + b"MAIL FROM:<ops@example.org>\r\nRCPT TO:<carol@example.net>\r\nDATA\r\n"
    )
    assert [m.rcpt_tos for m in server.messages] == [
        ["bob@example.net"],
        ["carol@example.net"],
        ["dave@example.net"],
    ]
    assert len(reads) == 4  # three messages, four writes: one round trip each
    assert session.transactions == 3
    await session.quit()


async def test_per_recipient_results_are_exact(server: PipeServer) -> None:
    session = await open_session(server)
    mixed = job(
        "bob@example.net", "nobody@example.net", "carol@example.net", "busy@example.net", partial=True
    )
    await session.run(mixed, lambda: None, max_transactions=100)
    delivery: Delivery = await mixed.future
    assert [(r.address, r.status, r.code) for r in delivery.recipients] == [
        ("bob@example.net", "accepted", 250),
        ("nobody@example.net", "refused", 550),
        ("carol@example.net", "accepted", 250),
        ("busy@example.net", "refused", 450),
    ]
    assert delivery.recipients[1].reply == "5.1.1 no such user"
    assert server.messages[0].rcpt_tos == ["bob@example.net", "carol@example.net"]
    assert transaction_reads(server)[0].endswith(b"DATA\r\n")  # partial allowed: DATA pipelined
    await session.quit()


async def test_strict_send_waits_for_rcpt_replies_before_data(server: PipeServer) -> None:
    session = await open_session(server)
    strict = job("bob@example.net", "nobody@example.net")
    after = job("carol@example.net")
    handed = [after]
    await session.run(strict, lambda: handed.pop() if handed else None, max_transactions=100)
    with pytest.raises(errors.RecipientsRefusedError) as info:
        await strict.future
    assert [r["status"] for r in info.value.recipients] == ["accepted", "refused"]
    assert "nothing was sent" in str(info.value)
    reads = transaction_reads(server)
    assert b"DATA" not in reads[0]
    assert reads[1].startswith(b"RSET\r\nMAIL FROM")  # the next message resets the open transaction
    assert (await after.future).code == 250
    assert [m.rcpt_tos for m in server.messages] == [["carol@example.net"]]
    await session.quit()


async def test_single_refused_recipient_gets_no_message(server: PipeServer) -> None:
    session = await open_session(server)
    refused = job("nobody@example.net")
    await session.run(refused, lambda: None, max_transactions=100)
    with pytest.raises(errors.RecipientsRefusedError, match=r"nobody@example\.net: 550"):
        await refused.future
    assert server.messages == [] and server.dots == 0
    assert session.usable
    await session.quit()


async def test_server_opening_data_without_recipients_gets_nothing() -> None:
    server = await PipeServer(
        refuse={"nobody@example.net": (550, "5.1.1 no")}, open_data_without_recipients=True
    ).start()
    try:
        session = await open_session(server)
        refused = job("nobody@example.net")
        await session.run(refused, lambda: None, max_transactions=100)
        with pytest.raises(errors.RecipientsRefusedError):
            await refused.future
        await asyncio.sleep(0.05)
        assert server.dots == 0 and not session.usable
    finally:
        await server.close()


async def test_sender_refusal_and_size_and_utf8_are_reported() -> None:
    server = await PipeServer(size=1000, refuse={}).start()
    try:
        session = await open_session(server)
        big = job("bob@example.net", data=b"x" * 2000 + b"\r\n")
        utf8 = job("dörte@example.net")
        control = job("bob@example.net", sender="a@b>\r\nRCPT TO:<x@y")
        await session.run(big, lambda: None, max_transactions=100)
        await session.run(utf8, lambda: None, max_transactions=100)
        await session.run(control, lambda: None, max_transactions=100)
        with pytest.raises(errors.MessageTooLargeError, match="SIZE 1000"):
            await big.future
        with pytest.raises(errors.RecipientsRefusedError, match="SMTPUTF8"):
            await utf8.future
        with pytest.raises(errors.TargetError, match="control character"):
            await control.future
        assert server.mails == 0
        await session.quit()
    finally:
        await server.close()


async def test_lockstep_without_pipelining() -> None:
    server = await PipeServer(pipelining=False, refuse={"nobody@example.net": (550, "5.1.1 no")}).start()
    try:
        session = await open_session(server)
        queue = [job("carol@example.net")]
        mixed = job("bob@example.net", "nobody@example.net", partial=True)
        await session.run(mixed, lambda: queue.pop() if queue else None, max_transactions=100)
        delivery = await mixed.future
        assert [r.status for r in delivery.recipients] == ["accepted", "refused"]
        for chunk in transaction_reads(server):
            # One command per write: the server's read never holds two lines outside DATA.
            assert chunk.count(b"\r\n") == 1 or chunk.endswith(b"\r\n.\r\n")
        assert [m.rcpt_tos for m in server.messages] == [["bob@example.net"], ["carol@example.net"]]
        await session.quit()
    finally:
        await server.close()


async def test_before_data_finishes_before_the_body_is_written(server: PipeServer) -> None:
    """The hook (a durable "sending" mark) overlaps the round trip to the 354, never the body."""
    session = await open_session(server)
    seen: list[int] = []

    async def mark() -> None:
        await asyncio.sleep(0.05)  # a commit that takes longer than the 354 on loopback
        seen.append(len(server.messages))

    async def refuse() -> None:
        raise RuntimeError("database is down")

    marked = job("bob@example.net")
    marked.before_data = mark
    await session.run(marked, lambda: None, max_transactions=100)
    assert (await marked.future).code == 250
    assert seen == [0]  # the body waited for the mark
    failing = job("carol@example.net")
    failing.before_data = refuse
    await session.run(failing, lambda: None, max_transactions=100)
    with pytest.raises(RuntimeError, match="database is down"):
        await failing.future
    assert len(server.messages) == 1  # its body was never written ...
    assert not session.usable  # ... and the server, waiting in DATA for it, was left
    await session.quit()


async def test_drop_before_body_hands_the_message_back() -> None:
    server = await PipeServer(drop_at_mail={1}).start()
    try:
        session = await open_session(server)
        dropped = job("bob@example.net")
        again = await session.run(dropped, lambda: None, max_transactions=100)
        assert again == [dropped] and not dropped.future.done()
        assert dropped.last_error is not None and "closed the connection during mail" in str(
            dropped.last_error
        )
    finally:
        await server.close()


async def test_drop_after_body_is_an_unknown_outcome() -> None:
    server = await PipeServer(drop_after_dot={1}).start()
    try:
        session = await open_session(server)
        sent = job("bob@example.net")
        follower = job("carol@example.net")
        handed = [follower]
        again = await session.run(sent, lambda: handed.pop() if handed else None, max_transactions=100)
        with pytest.raises(errors.TargetConnectError, match="may or may not have been accepted"):
            await sent.future
        assert again == [follower]  # its envelope shared the lost write; its body never left
        assert len(server.unanswered) == 1 and server.messages == []
    finally:
        await server.close()


async def test_a_timeout_fails_the_message_without_a_retry() -> None:
    server = await PipeServer(reply_delay=0.5).start()
    try:
        connection = SMTPConnection(endpoint(server, timeout=0.2))
        server.options.reply_delay = 0.0
        await connection.open(None)
        session = Session(connection)
        server.options.reply_delay = 0.5
        slow = job("bob@example.net")
        again = await session.run(slow, lambda: None, max_transactions=100)
        assert again == []
        with pytest.raises(errors.TargetTimeoutError, match="during mail"):
            await slow.future
    finally:
        await server.close()


async def test_a_slow_hook_does_not_hold_back_the_previous_body(server: PipeServer) -> None:
    session = await open_session(server)
    seen: list[int] = []

    async def slow_mark() -> None:
        await asyncio.sleep(0.1)  # a database commit
        seen.append(len(server.messages))

    second = job("carol@example.net")
    second.before_data = slow_mark
    handed = [second]
    await session.run(job("bob@example.net"), lambda: handed.pop() if handed else None, max_transactions=9)
    assert seen == [1]  # the first message was delivered while the second's hook ran
    assert [m.rcpt_tos for m in server.messages] == [["bob@example.net"], ["carol@example.net"]]
    await session.quit()
