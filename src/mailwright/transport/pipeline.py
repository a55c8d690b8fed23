"""The mail-transaction phase of an SMTP session, pipelined (RFC 2920) when the server allows it.

`SMTPConnection.open()` does the connect, TLS, EHLO and AUTH with aiosmtplib and
its diagnoses; then `Session` takes the transport over with a small protocol of
its own. aiosmtplib reads exactly one reply per command it wrote (a second reply
arriving in the same packet waits for more data that never comes), so it cannot
pipeline; everything after the handshake is written here.

How a message travels on a server that offers PIPELINING:

    write: [RSET] MAIL FROM, RCPT TO..., DATA           read: their replies (354 last)
    write: body + "." [+ the next message's MAIL, RCPT..., DATA]   read: 250 [+ theirs]

so a stream of messages costs one round trip each. DATA goes in the same write
as MAIL and RCPT only when no refusal can make that wrong: with one recipient
(if it is refused the server answers DATA with 503/554) or when the caller
allowed a partial send. With several recipients that must all be accepted, the
DATA command waits for their replies, because once the server has said 354
the only way out of DATA is to send the message.

Without PIPELINING every command waits for its reply (lock-step).

Which failures leave the message retryable: everything before the body's write
(the server cannot have accepted a message it never received), so a dropped
connection or a 421 there hands the message back (`Session.run` returns it) to be sent
again on a fresh connection. After the body was written, a lost connection or a
missing reply means the outcome is unknown: it is reported, never resent here.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, NamedTuple

from mailwright.domain.smtp import Capabilities
from mailwright.errors import (
    MessageTooLargeError,
    TargetConnectError,
    TargetError,
)
from mailwright.transport.replies import NO_MASK, ReplyMask
from mailwright.transport.smtp import (
    Delivery,
    RecipientResult,
    SMTPConnection,
    SMTPEndpoint,
    Stage,
    TLSState,
    human_size,
    recipients_refused,
    reply_error,
    translate_disconnect,
    translate_timeout,
)

# A whole reply may not grow past this (bounds memory against a babbling server).
MAX_REPLY = 64 * 1024
SERVICE_CLOSING = 421
_CONTROL = re.compile(r"[\x00-\x1f\x7f<>]")


class Reply(NamedTuple):
    code: int
    text: str


class _Failure(Enum):
    DROPPED = "dropped"
    TIMEOUT = "timeout"


class ReplyProtocol(asyncio.Protocol):
    """Parses server replies in order; one reader at a time waits for the next n of them.

    Replies that arrive when none is expected (a 421 on an idle connection before
    the server hangs up) mark the connection unusable instead of being paired
    with a later command.
    """

    def __init__(self, transport: asyncio.Transport, *, mask: ReplyMask = NO_MASK) -> None:
        self.transport = transport
        self._mask = mask  # the login's secret forms, hidden in every reply as it is parsed
        self.closed = transport.is_closing()
        self.unsolicited: Reply | None = None
        self._loop = asyncio.get_running_loop()
        self._buffer = b""
        self._lines: list[bytes] = []
        self._replies: list[Reply] = []
        self._expected = 0
        self._want = 0
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self._woken = False
        # One timer re-armed as needed rather than one per read: reads are many and short.
        self._deadline = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    # --- asyncio callbacks -----------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) < 3 or not line[:3].isdigit():
                self._fail_protocol()
                return
            self._lines.append(line[4:])
            if line[3:4] != b"-":
                text = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
                if self._mask:
                    text = self._mask(text)
                self._lines.clear()
                self._add(Reply(int(line[:3]), text))
        self._buffer = buffer[start:]
        if len(self._buffer) > MAX_REPLY or len(self._lines) > 1000:
            self._fail_protocol()
            return
        if self._waiter is not None and len(self._replies) >= self._want and not self._waiter.done():
            self._waiter.set_result(None)

    def _add(self, reply: Reply) -> None:
        if self._expected <= 0:
            self.unsolicited = reply
            return
        self._expected -= 1
        self._replies.append(reply)

    def _fail_protocol(self) -> None:
        # An answer that is not SMTP: nothing later on this connection can be trusted.
        self.transport.abort()

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # --- used by Session ---------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not self.closed and self.unsolicited is None and not self.transport.is_closing()

    def write(self, data: bytes, *, replies: int) -> bool:
        """Write and expect `replies` replies; False when the connection is already gone."""
        if not self.usable:
            return False
        self._expected += replies
        self.transport.write(data)
        return True

    async def drain(self) -> None:
        """Wait while the transport's buffer is full (large messages on slow links)."""
        while self._paused and not self.closed:
            self._drain = self._loop.create_future()
            await self._drain

    def _watch(self) -> None:
        """The read deadline: expire a read that is still waiting, or re-arm for the current one."""
        self._watchdog = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._loop.time() >= self._deadline:
            waiter.set_result(None)
        else:
            self._watchdog = self._loop.call_at(self._deadline, self._watch)

    def wake(self) -> None:
        """End a `read(..., wakeable=True)` early: there is something to write first."""
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(
        self, count: int, timeout: float, *, wakeable: bool = False
    ) -> tuple[list[Reply], _Failure | None]:
        """The next `count` replies, or those that came before the connection failed.

        A wakeable read that `wake` ended early returns ([], None) and consumes nothing.
        """
        self._woken = False
        if len(self._replies) < count and not self.closed:
            self._want = count
            self._waiter = self._loop.create_future()
            self._deadline = self._loop.time() + timeout
            if self._watchdog is None or self._watchdog.when() > self._deadline:
                if self._watchdog is not None:
                    self._watchdog.cancel()
                self._watchdog = self._loop.call_at(self._deadline, self._watch)
            try:
                await self._waiter
            finally:
                self._waiter = None
            if wakeable and self._woken and len(self._replies) < count and not self.closed:
                return [], None
        got = self._replies[:count]
        del self._replies[:count]
        if len(got) == count:
            return got, None
        if self.closed:
            return got, _Failure.DROPPED
        self.transport.abort()  # a late reply would be paired with the wrong command
        return got, _Failure.TIMEOUT


# --- what is sent ----------------------------------------------------------------------


def wire_body(data: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, dot-stuffed, ending with CRLF.CRLF."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        # Bare CR or LF (our own MIME never has them): what the server would see as line ends.
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if data.startswith(b"."):
        data = b"." + data
    if b"\n." in data:
        data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


@dataclass(slots=True, eq=False)
class Job:
    """One message waiting for, or on, a connection; `future` gets its Delivery or error."""

    sender: str
    recipients: list[tuple[str, bool]]
    data: bytes
    smtputf8: bool
    continue_if_one_address_valid: bool
    before_data: Callable[[], Awaitable[None]] | None
    future: asyncio.Future[Delivery]
    body: bytes = b""
    attempts: int = 0
    last_error: TargetError | None = None  # why it is being sent again
    queued_at: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def abandoned(self) -> bool:
        return self.future.done()

    def succeed(self, delivery: Delivery) -> None:
        if not self.future.done():
            self.future.set_result(delivery)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


Kind = Literal["final", "rset", "mail", "rcpt", "data"]
_Step = Literal["data", "done", "retry"]


@dataclass(slots=True)
class _Envelope:
    """A job's commands on this connection and what is known of their replies."""

    job: Job
    head: bytes
    kinds: list[Kind]
    wire: list[str]
    local: list[RecipientResult]
    with_data: bool
    results: list[RecipientResult] = field(default_factory=list)
    written_at: float = 0.0
    # The job's before_data hook (its durable "sending" mark), started when DATA is written and
    # awaited before the body: the commit overlaps the round trip to the 354.
    marking: asyncio.Future[bool] | None = None

    def start_marking(self) -> None:
        if self.job.before_data is not None and self.marking is None:
            self.marking = asyncio.ensure_future(_before_data(self.job))

    async def marked(self) -> bool:
        """Whether the body may be written: the mark is durable (or there is none)."""
        return self.marking is None or await self.marking

    @property
    def strict(self) -> bool:
        return not self.job.continue_if_one_address_valid


class Session:
    """Mail transactions on an opened connection; `run` sends jobs while more are waiting."""

    def __init__(self, connection: SMTPConnection) -> None:
        self.endpoint: SMTPEndpoint = connection.endpoint
        self.capabilities: Capabilities = connection.capabilities
        self.tls: TLSState | None = connection.tls
        self.open_timings = dict(connection.timings)
        self.transactions = 0
        self.last_used = time.monotonic()
        self.held: list[Job] = []  # the jobs handed to the current `run`
        self._needs_reset = False
        self._offers: deque[Session] | None = None
        self._offered: Job | None = None
        self._max_transactions = 0
        self._timeout = self.endpoint.command_timeout
        # RFC 5321 4.5.3.2.6: the reply to the end of data may take 10 minutes (the server may be
        # filtering the message); giving up sooner leaves an accepted message looking failed.
        self._data_timeout = self.endpoint.data_timeout
        transport = connection.detach()
        self._protocol = ReplyProtocol(transport, mask=connection.mask)
        transport.set_protocol(self._protocol)

    @property
    def usable(self) -> bool:
        return self._protocol.usable

    # --- health and closing ------------------------------------------------------------

    async def check(self, timeout: float) -> bool:
        """NOOP (RSET when a transaction may be open): is the connection still alive?"""
        command = b"RSET\r\n" if self._needs_reset else b"NOOP\r\n"
        reply, _failure = await self._command(command, timeout=timeout)
        if reply is None or reply.code != 250:
            self.abort()
            return False
        self._needs_reset = False
        self.last_used = time.monotonic()
        return True

    async def quit(self, timeout: float = 5.0) -> None:
        """QUIT, wait briefly for 221, close."""
        try:
            await self._command(b"QUIT\r\n", timeout=min(timeout, self._timeout))
        finally:
            self.abort()

    def close_now(self) -> None:
        """QUIT without waiting for the reply, then close (the event loop is about to end)."""
        transport = self._protocol.transport
        self._protocol.write(b"QUIT\r\n", replies=1)
        if transport.get_extra_info("sslcontext") is None:
            transport.close()  # flushes the QUIT first
        else:
            # A TLS close waits for the server's close_notify, which may outlive the loop.
            transport.abort()

    def abort(self) -> None:
        self._protocol.transport.abort()

    # --- sending -----------------------------------------------------------------------

    def offer(self, job: Job) -> bool:
        """Take `job` now if this connection is only awaiting a final reply (see `run`)."""
        if self._offered is not None or self.transactions >= self._max_transactions or not self.usable:
            return False
        self._offered = job
        self.held.append(job)
        self._protocol.wake()
        return True

    async def run(
        self,
        first: Job,
        take_next: Callable[[], Job | None],
        *,
        max_transactions: int,
        offers: deque[Session] | None = None,
    ) -> list[Job]:
        """Send `first`, then whatever `take_next` hands over while this connection may take more.

        While only a body's final reply is awaited, the session waits in `offers`,
        so that a message arriving then can have its envelope written at once (the
        server is between transactions) instead of after the reply.

        Every job ends settled (its future has a Delivery or an error) except those
        returned: they never had their body written and should go on a fresh connection.
        """
        self.held = [first]
        self._offers = offers
        self._max_transactions = max_transactions

        def more() -> Job | None:
            offered, self._offered = self._offered, None
            if offered is not None:  # offered just as the reply came
                return offered
            if self.transactions >= max_transactions or not self.usable:
                return None
            taken = take_next()
            if taken is not None:
                self.held.append(taken)
            return taken

        if self.capabilities.pipelining:
            return await self._pipelined(first, more)
        job: Job | None = first
        while job is not None:
            if (retry := await self._lockstep(job)) is not None:
                return [retry]
            job = more()
        return []

    def _unsent(self) -> list[Job]:
        """A job offered but never written when the connection failed: it goes elsewhere."""
        job, self._offered = self._offered, None
        return [job] if job is not None else []

    def _prepare(self, job: Job | None) -> _Envelope | None:
        if job is None or job.abandoned:
            return None
        return self._envelope(job)

    def _envelope(self, job: Job) -> _Envelope | None:
        """The job's commands, or None when it was settled without the server (too big, refused)."""
        ep = self.endpoint
        caps = self.capabilities
        size = len(job.data)
        if caps.size is not None and size > caps.size:
            job.fail(
                MessageTooLargeError(
                    f"the message is {human_size(size)}; {ep.address} accepts at most "
                    f"{human_size(caps.size)} (SIZE {caps.size})",
                    size=size,
                    limit=caps.size,
                    target=ep.target_name,
                )
            )
            return None
        utf8 = job.smtputf8 and caps.smtputf8
        local = [
            RecipientResult(
                address=address,
                status="refused",
                reply=f"{ep.address} does not offer SMTPUTF8, which this address needs",
            )
            for address, needs in job.recipients
            if needs and not utf8
        ]
        wire = [address for address, needs in job.recipients if utf8 or not needs]
        if not wire:
            job.fail(recipients_refused(ep, local, allowed_partial=job.continue_if_one_address_valid))
            return None
        bad = next((a for a in (job.sender, *wire) if _CONTROL.search(a)), None)
        if bad is not None:
            # Parsed addresses never hold these; refusing them keeps commands from being injected.
            job.fail(
                TargetError(
                    f"the envelope address {bad!r} holds a control character or angle bracket",
                    target=ep.target_name,
                )
            )
            return None
        strict = not job.continue_if_one_address_valid
        with_data = caps.pipelining and not (strict and (local or len(wire) > 1))
        options = f" SIZE={size}" if caps.size is not None else ""
        if utf8:
            options += " SMTPUTF8"
        lines = [f"MAIL FROM:<{job.sender}>{options}\r\n"]
        lines.extend(f"RCPT TO:<{address}>\r\n" for address in wire)
        kinds: list[Kind] = ["mail", *(["rcpt"] * len(wire))]  # type: ignore[list-item]
        if with_data:
            lines.append("DATA\r\n")
            kinds.append("data")
        try:
            head = "".join(lines).encode("utf-8" if utf8 else "ascii")
        except UnicodeEncodeError:
            job.fail(
                TargetError(
                    f"the envelope needs SMTPUTF8, which {ep.address} does not offer",
                    target=ep.target_name,
                    hint="send from and to ASCII addresses",
                )
            )
            return None
        if not job.body:
            job.body = wire_body(job.data)
        return _Envelope(job=job, head=head, kinds=kinds, wire=wire, local=local, with_data=with_data)

    async def _pipelined(self, first: Job, more: Callable[[], Job | None]) -> list[Job]:
        pending = self._prepare(first)  # envelope to write; its body not yet written
        sending: _Envelope | None = None  # body goes out in this round; its final reply is awaited
        while True:
            if pending is None and sending is None:
                job = more()
                if job is None:
                    return []
                pending = self._prepare(job)
                continue
            written = await self._write_round(sending, pending)
            if written is None:
                # Nothing of this round left: every job in it can go again.
                jobs = [env.job for env in (sending, pending) if env is not None]
                for job in jobs:
                    job.last_error = translate_disconnect(self.endpoint, "mail")
                return [*jobs, *self._unsent()]
            kinds, pending = written
            result = None
            if pending is None and sending is not None and self._offers is not None:
                kinds, pending, result = await self._await_final_or_offer(kinds)
            if result is None:
                result = await self._protocol.read(len(kinds), self._read_timeout(kinds))
            replies, failure = result
            self.last_used = time.monotonic()
            collateral = False  # the body's reply never came, so neither could the envelope's
            if sending is not None:
                if replies:
                    self._settle(sending, replies[0])
                else:
                    sending.job.fail(self._unknown(failure))
                    collateral = True
                replies = replies[1:]
                kinds = kinds[1:]
                sending = None
            if pending is not None:
                if kinds and kinds[0] == "rset":
                    if replies and replies[0].code == 250:
                        self._needs_reset = False
                    replies = replies[1:]
                step = self._apply_envelope(pending, replies, failure, collateral=collateral)
                if step == "data":
                    step = await self._data_command(pending)
                if step == "retry":
                    return [pending.job, *self._unsent()]
                sending = pending if step == "data" else None
                pending = None
            if failure is not None:
                return self._unsent()
            if sending is not None:
                pending = self._prepare(more())

    async def _await_final_or_offer(
        self, kinds: list[Kind]
    ) -> tuple[list[Kind], _Envelope | None, tuple[list[Reply], _Failure | None] | None]:
        """Wait for the body's reply; a message offered meanwhile has its envelope written at once.

        Returns the replies to expect, the envelope written (if any), and the read's
        result when it ended without an offer (else the caller reads).
        """
        offers = self._offers
        assert offers is not None
        try:
            while True:
                if self not in offers:  # an offer takes the session off the list
                    offers.append(self)
                result = await self._protocol.read(len(kinds), self._read_timeout(kinds), wakeable=True)
                if result[0] or result[1] is not None or self._offered is None:
                    return kinds, None, result
                job, self._offered = self._offered, None
                pending = self._prepare(job)
                if pending is None:
                    continue
                written = await self._write_round(None, pending)
                if written is None:
                    # Gone before the write: the read finds it so, and the job goes again.
                    job.last_error = translate_disconnect(self.endpoint, "mail")
                    return kinds, pending, None
                more_kinds, pending = written
                if pending is not None:
                    return [*kinds, *more_kinds], pending, None
        finally:
            if self in offers:
                offers.remove(self)

    async def _write_round(
        self, sending: _Envelope | None, pending: _Envelope | None
    ) -> tuple[list[Kind], _Envelope | None] | None:
        """Write a body and the next envelope, in one write.

        The body goes only once its job's before_data hook (a durable "sending" mark,
        started when its DATA command was written) has finished; if the hook failed,
        the server waits for a body that will not come, so the connection is left.
        Returns the replies to expect and the envelope that was written, or None when
        nothing was written (the connection was gone, or is left).
        """
        kinds: list[Kind] = []
        parts: list[bytes] = []
        if sending is not None:
            if not await sending.marked():
                self.abort()  # the job has failed with the hook's reason
                return None
            sending.written_at = time.perf_counter()
            kinds.append("final")
            parts.append(sending.job.body)
        if pending is not None:
            if pending.with_data:
                pending.start_marking()
            if self._needs_reset:
                parts.append(b"RSET\r\n")
                kinds.append("rset")
            parts.append(pending.head)
            kinds.extend(pending.kinds)
            self.transactions += 1
            pending.written_at = time.perf_counter()
            pending.job.timings["queue"] = _ms(pending.job.queued_at, pending.written_at)
        if parts and not self._protocol.write(b"".join(parts), replies=len(kinds)):
            return None
        await self._protocol.drain()
        return kinds, pending

    def _apply_envelope(
        self, env: _Envelope, replies: list[Reply], failure: _Failure | None, *, collateral: bool
    ) -> _Step:
        """Apply the replies to MAIL, RCPT (and DATA): 'data' when the body may follow."""
        job = env.job
        ep = self.endpoint
        closing = next((r for r in replies if r.code == SERVICE_CLOSING), None)
        if closing is not None or len(replies) < len(env.kinds):
            self.abort()  # nothing later on this connection can be trusted
            stage = env.kinds[min(len(replies), len(env.kinds) - 1)]
            if failure is _Failure.TIMEOUT and not collateral and closing is None:
                job.fail(_at(translate_timeout(ep, _stage(stage)), stage))
                return "done"
            job.last_error = self._lost(stage, closing)
            return "retry"
        job.timings["envelope"] = _ms(env.written_at, time.perf_counter())
        mail = replies[0]
        if mail.code != 250:
            if env.with_data and replies[-1].code == 354:
                self.abort()  # a server in DATA after refusing MAIL: leave rather than send
            self._needs_reset = True
            job.fail(_sender_refused(ep, job, mail))
            return "done"
        env.results = _merge(job, env.wire, replies[1 : 1 + len(env.wire)], env.local)
        accepted = any(r.status == "accepted" for r in env.results)
        complete = accepted and not (env.strict and any(r.status == "refused" for r in env.results))
        if not env.with_data:
            if complete:
                return "data"
            self._needs_reset = True
            job.fail(recipients_refused(ep, env.results, allowed_partial=not env.strict))
            return "done"
        data = replies[-1]
        if data.code == 354 and complete:
            return "data"
        if data.code == 354:
            # A server that opens DATA without a valid recipient: leave rather than send.
            self.abort()
        self._needs_reset = True
        if complete:
            job.fail(_at(reply_error(ep, "refused the message", data.code, data.text), "data"))
        else:
            job.fail(recipients_refused(ep, env.results, allowed_partial=not env.strict))
        return "done"

    async def _data_command(self, env: _Envelope) -> _Step:
        """DATA, when it had to wait for the RCPT replies; 'data' once the server said 354."""
        if env.with_data:
            return "data"
        job = env.job
        env.start_marking()  # awaited before the body
        reply, failure = await self._command(b"DATA\r\n", timeout=self._timeout)
        if reply is None or reply.code == SERVICE_CLOSING:
            self.abort()
            if failure is _Failure.TIMEOUT:
                job.fail(_at(translate_timeout(self.endpoint, "data"), "data"))
                return "done"
            job.last_error = self._lost("data", reply)
            return "retry"
        if reply.code != 354:
            self._needs_reset = True
            job.fail(_at(reply_error(self.endpoint, "refused the message", reply.code, reply.text), "data"))
            return "done"
        return "data"

    def _settle(self, env: _Envelope, final: Reply) -> None:
        job = env.job
        job.timings["data"] = _ms(env.written_at, time.perf_counter())
        if final.code != 250:
            self._needs_reset = True
            job.fail(_at(reply_error(self.endpoint, "refused the message", final.code, final.text), "data"))
            return
        job.succeed(
            Delivery(
                recipients=env.results,
                code=final.code,
                reply=final.text,
                size=len(job.data),
                timings=job.timings,
                tls=self.tls,
            )
        )

    def _read_timeout(self, kinds: list[Kind]) -> float:
        """The end-of-data timeout when a body's reply is among those awaited, else the command's."""
        return self._data_timeout if kinds and kinds[0] == "final" else self._timeout

    def _unknown(self, failure: _Failure | None) -> TargetError:
        """The body was written but its reply never came: the outcome is unknown."""
        if failure is _Failure.TIMEOUT:
            error: TargetError = translate_timeout(self.endpoint, "data")
            error.message = (
                f"{self.endpoint.address} did not answer within {self._data_timeout:g} s after the "
                "message was sent; it may or may not have been accepted"
            )
            error.hint = (
                "a slow server may need a longer data timeout "
                f"(the target's --data-timeout, now {self._data_timeout:g} s)"
            )
        else:
            error = translate_disconnect(self.endpoint, "data")
        error.outcome_unknown = True
        return _at(error, "data")

    def _lost(self, kind: Kind, closing: Reply | None) -> TargetError:
        """Why an envelope could not finish, named after the first command left unanswered."""
        stage = _stage(kind)
        if closing is not None:
            error = reply_error(self.endpoint, f"answered {stage.upper()} with an error", 421, closing.text)
        elif stage == "data":
            error = TargetConnectError(
                f"{self.endpoint.address} closed the connection at DATA, before the message was sent",
                target=self.endpoint.target_name,
            )
        else:
            error = translate_disconnect(self.endpoint, stage)
        return _at(error, stage)

    # --- lock-step -----------------------------------------------------------------------

    async def _command(self, line: bytes, *, timeout: float) -> tuple[Reply | None, _Failure | None]:
        if not self._protocol.write(line, replies=1):
            return None, _Failure.DROPPED
        await self._protocol.drain()
        replies, failure = await self._protocol.read(1, timeout)
        return (replies[0] if replies else None), failure

    async def _lockstep(self, job: Job) -> Job | None:
        """One message, each command awaiting its reply; returns the job if it should go again."""
        env = None if job.abandoned else self._envelope(job)
        if env is None:
            return None
        if self._needs_reset:
            reply, _failure = await self._command(b"RSET\r\n", timeout=self._timeout)
            if reply is None or reply.code != 250:
                self.abort()
                job.last_error = self._lost("mail", None)
                return job
            self._needs_reset = False
        self.transactions += 1
        env.written_at = time.perf_counter()
        job.timings["queue"] = _ms(job.queued_at, env.written_at)
        replies: list[Reply] = []
        for line, kind in zip(env.head.splitlines(keepends=True), env.kinds, strict=True):
            reply, failure = await self._command(line, timeout=self._timeout)
            if reply is None or reply.code == SERVICE_CLOSING:
                return self._lockstep_lost(job, kind, reply, failure)
            replies.append(reply)
            if kind == "mail" and reply.code != 250:
                self._needs_reset = True
                job.fail(_sender_refused(self.endpoint, job, reply))
                return None
        step = self._apply_envelope(env, replies, None, collateral=False)
        if step == "data":
            step = await self._data_command(env)
        if step == "retry":
            return job
        if step != "data":
            return None
        if not await env.marked():
            self.abort()  # in DATA, with no body to send: leave
            return None
        env.written_at = time.perf_counter()
        reply, failure = await self._command(job.body, timeout=self._data_timeout)
        if reply is None:
            job.fail(self._unknown(failure))
        else:
            self._settle(env, reply)
        return None

    def _lockstep_lost(
        self, job: Job, kind: Kind, reply: Reply | None, failure: _Failure | None
    ) -> Job | None:
        self.abort()
        if failure is _Failure.TIMEOUT:
            job.fail(_at(translate_timeout(self.endpoint, _stage(kind)), _stage(kind)))
            return None
        job.last_error = self._lost(kind, reply)
        return job


async def _before_data(job: Job) -> bool:
    """Run the job's hook; a failing hook fails the job before its DATA is written."""
    if job.before_data is None:
        return True
    try:
        await job.before_data()
    except Exception as exc:
        job.fail(exc)
        return False
    return True


def _merge(
    job: Job, wire: list[str], replies: list[Reply], local: list[RecipientResult]
) -> list[RecipientResult]:
    """Per-recipient outcomes in the caller's order, each RCPT reply matched to its address."""
    results = [
        RecipientResult(
            address=address,
            status="accepted" if 200 <= reply.code < 300 else "refused",
            code=reply.code,
            reply=reply.text,
        )
        for address, reply in zip(wire, replies, strict=True)
    ]
    if not local:
        return results
    by_address = {r.address: r for r in [*results, *local]}
    return [by_address[address] for address, _ in job.recipients]


def _sender_refused(ep: SMTPEndpoint, job: Job, reply: Reply) -> TargetError:
    error = reply_error(
        ep,
        "refused the sender",
        reply.code,
        reply.text,
        job.sender,
        hint="use a From address the account key may send as",
    )
    return _at(error, "mail")


def _stage(kind: Kind) -> Stage:
    return "mail" if kind in ("rset", "final") else kind  # type: ignore[return-value]


def _at(error: TargetError, stage: str) -> TargetError:
    error.stage = stage
    return error


def _ms(started: float, ended: float) -> float:
    return round((ended - started) * 1000, 2)


__all__ = ["Job", "Reply", "ReplyProtocol", "Session", "wire_body"]
