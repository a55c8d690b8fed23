"""In-process SMTP servers for integration tests.

``SMTPTestServer`` wraps aiosmtpd with TLS (implicit or STARTTLS), AUTH PLAIN/LOGIN,
SIZE, SMTPUTF8 and fault injection (``Faults``).  ``RawLineServer`` is a scripted TCP
server for misconfiguration and timeout tests (plain greeting on a port the client
thinks is TLS, a server that never speaks, a server that hangs up at once).

Both run their own asyncio event loop in a daemon thread, so they work the same from
sync tests (CLI, smtplib) and async tests (aiosmtplib), and are used either with
``start()``/``stop()`` or as a sync or async context manager.  A stopped server can be
started again on the same port (``port`` keeps the port picked the first time), which
is handy for "server down, then back" tests.

aiosmtpd's own ``Controller`` is deliberately not used: it cannot bind port 0 (its
start-up self-test connects to the *requested* port) and that self-test opens a real
SMTP connection, which would be counted and would consume fault budgets.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, NoReturn, Protocol, Self, TypedDict, TypeVar, Unpack

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.tlsfiles import TLSFiles

__all__ = [
    "CONNECTION_STAGES",
    "DEFAULT_RAW_SCRIPT",
    "DISCONNECT_STAGES",
    "REPLY_STAGES",
    "TRANSACTION_STAGES",
    "Faults",
    "RawLineServer",
    "RawMode",
    "Received",
    "SMTPServerFactory",
    "SMTPServerOptions",
    "SMTPTestServer",
    "TLSMode",
]

_T = TypeVar("_T")

TLSMode = Literal["none", "starttls", "ssl"]
RawMode = Literal["script", "tls_only", "silent", "close"]

#: Stages decided once per connection (see ``Faults.fail_times``).
CONNECTION_STAGES: frozenset[str] = frozenset({"connect", "ehlo", "helo", "starttls", "auth"})
#: Stages decided once per mail transaction (each MAIL command starts one).
TRANSACTION_STAGES: frozenset[str] = frozenset({"mail", "rcpt", "data", "after_data"})
#: Valid keys of ``Faults.reply`` and ``Faults.delay``.
REPLY_STAGES: frozenset[str] = CONNECTION_STAGES | {"mail", "rcpt", "data"}
#: Valid values of ``Faults.disconnect_at``.
DISCONNECT_STAGES: frozenset[str] = CONNECTION_STAGES | TRANSACTION_STAGES

SERVER_NAME = "mailwright-test.localhost"
SERVER_IDENT = "Mailwright test ESMTP"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def _format_reply(code: int, text: str) -> str:
    """``(451, "a\\nb")`` -> ``"451-a\\r\\n451 b"`` (multi-line text gives a multi-line reply)."""
    lines = text.replace("\r\n", "\n").split("\n") or [""]
    head = [f"{code}-{line}" for line in lines[:-1]]
    return "\r\n".join([*head, f"{code} {lines[-1]}"])


def _reply_lines(code: int, text: str) -> list[str]:
    return _format_reply(code, text).split("\r\n")


# --------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------


@dataclass
class Received:
    """One message as the server got it."""

    mail_from: str
    """Reverse-path; ``""`` for the null sender ``MAIL FROM:<>``."""
    rcpt_tos: list[str]
    """Accepted recipients only (refused ones are not listed)."""
    content: bytes
    """DATA as received: CRLF line ends, dot-unstuffed, without the final ``.``."""
    smtputf8: bool
    mail_options: list[str]
    """MAIL parameters, upper-cased by aiosmtpd (``SIZE=123``, ``BODY=8BITMIME``, ...)."""
    rcpt_options: list[str]
    auth_login: str | None
    """User name that authenticated on this connection, if any."""
    tls: bool = False
    """Whether the message came over TLS (implicit or after STARTTLS)."""


@dataclass
class Faults:
    """Fault injection for ``SMTPTestServer``; every field is optional.

    Stages: ``connect`` (the greeting), ``ehlo``, ``helo``, ``starttls``, ``auth``,
    ``mail``, ``rcpt``, ``data`` and (for ``disconnect_at`` only) ``after_data``.

    * ``reply``: stage -> (code, text) replacing the normal reply.  ``data`` is the reply
      after the end of the message.  Multi-line text gives a multi-line reply.
      2xx/3xx codes keep the normal behaviour with a custom text (custom banner, custom
      "queued as" text); other codes refuse the command.  A failing ``connect`` reply
      closes the connection for 4xx (421) and, for 5xx (554), answers every later
      command with 503 until QUIT, as RFC 5321 3.1 asks.  An ``auth`` reply never
      authenticates.
    * ``refuse_recipients``: address (case-insensitive) -> (code, text) for its RCPT.
    * ``disconnect_at``: drop the connection (no reply) when the client reaches the
      stage: ``data`` is the DATA command, ``after_data`` is after the whole message
      arrived (it then lands in ``SMTPTestServer.dropped``).
    * ``delay``: stage -> seconds to sleep before replying (``data`` is the final reply
      after the message).  If the client gives up during a ``data`` delay the message
      lands in ``dropped``.
    * ``fail_times``: if set, the faults of each stage apply only to the first N
      connections (connection stages) or mail transactions (mail, rcpt, data,
      after_data) that reach that stage; afterwards the server behaves normally.  A
      connection that never reaches a stage does not use up that stage's budget.
    """

    reply: dict[str, tuple[int, str]] = field(default_factory=dict)
    refuse_recipients: dict[str, tuple[int, str]] = field(default_factory=dict)
    disconnect_at: str | None = None
    delay: dict[str, float] = field(default_factory=dict)
    fail_times: int | None = None

    def __post_init__(self) -> None:
        for name, stages in (("reply", self.reply), ("delay", self.delay)):
            unknown = set(stages) - REPLY_STAGES
            if unknown:
                raise ValueError(
                    f"Faults.{name}: unknown stage(s) {sorted(unknown)}; valid: {sorted(REPLY_STAGES)}"
                )
        for code, _text in [*self.reply.values(), *self.refuse_recipients.values()]:
            if not 200 <= code <= 599:
                raise ValueError(f"Faults: reply code {code} out of range 200..599")
        if self.disconnect_at is not None and self.disconnect_at not in DISCONNECT_STAGES:
            raise ValueError(
                f"Faults.disconnect_at: unknown stage {self.disconnect_at!r}; "
                f"valid: {sorted(DISCONNECT_STAGES)}"
            )
        if any(seconds < 0 for seconds in self.delay.values()):
            raise ValueError("Faults.delay: negative delay")
        if self.fail_times is not None and self.fail_times < 0:
            raise ValueError("Faults.fail_times must be >= 0")

    def involves(self, stage: str) -> bool:
        """Whether any fault is configured for ``stage``."""
        return (
            stage in self.reply
            or stage in self.delay
            or self.disconnect_at == stage
            or (stage == "rcpt" and bool(self.refuse_recipients))
        )

    def recipient_reply(self, address: str) -> tuple[int, str] | None:
        wanted = address.casefold()
        for candidate, reply in self.refuse_recipients.items():
            if candidate.casefold() == wanted:
                return reply
        return None


class SMTPServerOptions(TypedDict, total=False):
    """Keyword arguments of ``SMTPTestServer`` (for the pytest factory fixture)."""

    tls: TLSMode
    tls_files: TLSFiles | None
    tls_cert: Literal["good", "wrong_host"]
    users: dict[str, str] | None
    auth_required: bool | None
    auth_require_tls: bool | None
    require_starttls: bool
    smtputf8: bool
    size_limit: int | None
    faults: Faults | None
    hostname: str
    port: int


class SMTPServerFactory(Protocol):
    """Type of the ``smtp_server_factory`` fixture: builds and starts a server."""

    def __call__(self, **options: Unpack[SMTPServerOptions]) -> SMTPTestServer: ...


# --------------------------------------------------------------------------------------
# Event loop in a thread, shared by both servers
# --------------------------------------------------------------------------------------


class _LoopThread:
    """An asyncio event loop running forever in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self, timeout: float) -> None:
        """Cancel every task still running, stop the loop and join the thread."""
        try:
            self.run(_cancel_other_tasks(), timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self.loop.close()


async def _cancel_other_tasks() -> None:
    # Let connection_lost() callbacks of just-aborted transports run first.
    for _ in range(3):
        await asyncio.sleep(0)
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _bind(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket for the first address of ``host``."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _abort(transport: asyncio.BaseTransport | None) -> None:
    if transport is None:
        return
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()


class _BackgroundServer:
    """Start/stop and context-manager plumbing shared by the two servers."""

    def __init__(self, *, hostname: str, port: int, thread_name: str) -> None:
        self.host = hostname
        self.port = port
        self._thread_name = thread_name
        self._loop_thread: _LoopThread | None = None
        self._server: asyncio.Server | None = None

    @property
    def running(self) -> bool:
        return self._loop_thread is not None

    def start(self) -> Self:
        """Bind and start serving; returns self.  ``port`` is set to the bound port."""
        if self._loop_thread is not None:
            raise RuntimeError(f"{self!r} is already running")
        sock = _bind(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        loop_thread = _LoopThread(f"{self._thread_name}:{self.port}")
        try:
            self._server = loop_thread.run(self._serve(loop_thread.loop, sock), START_TIMEOUT)
        except BaseException:
            sock.close()
            loop_thread.close(STOP_TIMEOUT)
            raise
        self._loop_thread = loop_thread
        return self

    def stop(self) -> None:
        """Stop listening, drop every open connection and join the thread (idempotent)."""
        loop_thread, self._loop_thread = self._loop_thread, None
        if loop_thread is None:
            return
        try:
            loop_thread.run(self._shutdown(), STOP_TIMEOUT)
        finally:
            loop_thread.close(STOP_TIMEOUT)
            self._server = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort_connections()
        for _ in range(3):
            await asyncio.sleep(0)

    async def _serve(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> asyncio.Server:
        raise NotImplementedError

    def _abort_connections(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


# --------------------------------------------------------------------------------------
# aiosmtpd subclass and handler
# --------------------------------------------------------------------------------------


class _Session(Session):
    """aiosmtpd's Session without the deprecation log line on every successful AUTH."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _TestSMTP(SMTP):
    """aiosmtpd's SMTP protocol with fault injection hooks; one instance per connection."""

    def __init__(self, owner: SMTPTestServer, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = owner
        # Passing auth_required=True with auth_require_tls=False makes aiosmtpd emit a
        # UserWarning (from the server thread); setting the attribute afterwards gives
        # the same enforcement (aiosmtpd's check_auth_needed() reads it) silently.
        self._auth_required = owner.auth_required
        self.auth_login: str | None = None
        self._conn_decisions: dict[str, bool] = {}
        self._txn_decisions: dict[str, bool] = {}
        self._next_push: str | None = None

    # ---- connection bookkeeping ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None  # not the re-entry after STARTTLS
        super().connection_made(transport)
        if first:
            self.owner._register(self)
        else:
            self.auth_login = None  # aiosmtpd starts a fresh session after STARTTLS

    def connection_lost(self, error: Exception | None) -> None:
        self.owner._unregister(self)
        super().connection_lost(error)

    def _create_session(self) -> Session:
        return _Session(self.loop)

    @property
    def over_tls(self) -> bool:
        return self.owner.tls == "ssl" or self._tls_protocol is not None

    def abort_connection(self) -> None:
        _abort(self.transport)

    # ---- fault plumbing ----

    def active_faults(self, stage: str) -> Faults | None:
        """The faults to apply at ``stage`` on this connection/transaction, if any."""
        faults = self.owner.faults
        if faults is None or not faults.involves(stage):
            return None
        decisions = self._txn_decisions if stage in TRANSACTION_STAGES else self._conn_decisions
        if stage not in decisions:
            decisions[stage] = self.owner._take_fault_budget(stage)
        return faults if decisions[stage] else None

    async def drop(self, stage: str) -> NoReturn:
        """Abort the connection; connection_lost() then cancels the running handler."""
        self.owner._note_fault(stage, "disconnect")
        self.abort_connection()
        await asyncio.sleep(60)
        raise ConnectionAbortedError(f"test server dropped the connection at {stage!r}")

    async def before(self, stage: str, *, delay: bool = True) -> Faults | None:
        """Apply delay and disconnect faults for a command stage; return active faults."""
        faults = self.active_faults(stage)
        if faults is None:
            return None
        seconds = faults.delay.get(stage)
        if delay and seconds is not None:
            self.owner._note_fault(stage, "delay")
            await asyncio.sleep(seconds)
        if faults.disconnect_at == stage:
            await self.drop(stage)
        return faults

    async def push(self, status: str | bytes) -> None:
        if self._next_push is not None:
            status, self._next_push = self._next_push, None
        if isinstance(status, str):
            await super().push(status)
        else:
            await super().push(status)

    # ---- overridden aiosmtpd behaviour ----

    async def _handle_client(self) -> None:
        faults = await self.before("connect")
        reply = faults.reply.get("connect") if faults is not None else None
        if reply is None:
            await super()._handle_client()
            return
        self.owner._note_fault("connect", "reply")
        code, text = reply
        if code < 400:
            self._next_push = _format_reply(code, text)  # replaces aiosmtpd's greeting
            await super()._handle_client()
            return
        await self.push(_format_reply(code, text))
        if code >= 500:
            await self._bad_sequence_until_quit()
        if self.transport is not None:
            self.transport.close()

    async def _bad_sequence_until_quit(self) -> None:
        for _ in range(100):
            try:
                line = await self._reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                return
            if not line:
                return
            if line.strip().upper() == b"QUIT":
                await self.push("221 2.0.0 Bye")
                return
            await self.push("503 5.5.1 Bad sequence of commands")

    async def smtp_EHLO(self, hostname: str) -> None:
        await self.before("ehlo")
        await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        await self.before("helo")
        await super().smtp_HELO(hostname)

    async def smtp_STARTTLS(self, arg: str) -> None:
        faults = await self.before("starttls")
        reply = faults.reply.get("starttls") if faults is not None else None
        if reply is not None and not arg and self.tls_context is not None:
            self.owner._note_fault("starttls", "reply")
            await self.push(_format_reply(*reply))
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        if not self.owner.users:
            await self.push("502 5.5.1 AUTH not available")
            return
        await self.before("auth")
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._txn_decisions = {}  # every MAIL command starts a new transaction
        await self.before("mail")
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        await self.before("rcpt")
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        await self.before("data", delay=False)  # a "data" delay is before the final reply
        await super().smtp_DATA(arg)


def _as_test_smtp(server: SMTP) -> _TestSMTP:
    assert isinstance(server, _TestSMTP)
    return server


class _Handler:
    """aiosmtpd handler hooks: reply faults, EHLO tweaks, and recording messages."""

    def __init__(self, owner: SMTPTestServer) -> None:
        self.owner = owner

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        smtp = _as_test_smtp(server)
        faults = smtp.active_faults("ehlo")
        reply = faults.reply.get("ehlo") if faults is not None else None
        if reply is not None:
            self.owner._note_fault("ehlo", "reply")
            if 200 <= reply[0] < 300:
                session.host_name = hostname
            return _reply_lines(*reply)
        # With a handle_EHLO hook, aiosmtpd leaves setting host_name to the hook.
        session.host_name = hostname
        if not self.owner.users:
            # aiosmtpd advertises "AUTH" (even with no mechanism) whenever TLS allows it.
            responses = [line for line in responses if not line[4:].upper().startswith("AUTH")]
        return responses

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str) -> object:
        faults = _as_test_smtp(server).active_faults("helo")
        reply = faults.reply.get("helo") if faults is not None else None
        if reply is None:
            return MISSING
        self.owner._note_fault("helo", "reply")
        if 200 <= reply[0] < 300:
            session.host_name = hostname
        return _format_reply(*reply)

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> object:
        faults = _as_test_smtp(server).active_faults("auth")
        reply = faults.reply.get("auth") if faults is not None else None
        if reply is None:
            return MISSING
        self.owner._note_fault("auth", "reply")
        return _format_reply(*reply)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> object:
        faults = _as_test_smtp(server).active_faults("mail")
        reply = faults.reply.get("mail") if faults is not None else None
        if reply is None:
            return MISSING
        self.owner._note_fault("mail", "reply")
        if 200 <= reply[0] < 300:
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return _format_reply(*reply)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> object:
        faults = _as_test_smtp(server).active_faults("rcpt")
        if faults is None:
            return MISSING
        reply = faults.recipient_reply(address)
        if reply is not None:
            self.owner._note_fault("rcpt", "refuse_recipient")
        else:
            reply = faults.reply.get("rcpt")
            if reply is None:
                return MISSING
            self.owner._note_fault("rcpt", "reply")
        if 200 <= reply[0] < 300:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return _format_reply(*reply)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        smtp = _as_test_smtp(server)
        received = Received(
            mail_from="" if envelope.mail_from in (None, "<>") else str(envelope.mail_from),
            rcpt_tos=list(envelope.rcpt_tos),
            content=bytes(envelope.original_content or b""),
            smtputf8=bool(envelope.smtp_utf8),
            mail_options=list(envelope.mail_options),
            rcpt_options=list(envelope.rcpt_options),
            auth_login=smtp.auth_login,
            tls=smtp.over_tls,
        )
        faults = smtp.active_faults("data")
        try:
            seconds = faults.delay.get("data") if faults is not None else None
            if seconds is not None:
                self.owner._note_fault("data", "delay")
                await asyncio.sleep(seconds)
            if smtp.active_faults("after_data") is not None:  # only disconnect_at applies
                await smtp.drop("after_data")
        except BaseException:
            self.owner._record(received, accepted=False)
            raise
        reply = faults.reply.get("data") if faults is not None else None
        if reply is None:
            self.owner._record(received, accepted=True)
            return "250 2.0.0 OK"
        self.owner._note_fault("data", "reply")
        self.owner._record(received, accepted=200 <= reply[0] < 300)
        return _format_reply(*reply)

    def authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        users = self.owner.users or {}
        ok = username in users and users[username] == password
        self.owner._note_auth(username, ok)
        if not ok:
            # handled=False makes aiosmtpd send 535; handled=True would send nothing
            # and leave the client waiting forever.
            return AuthResult(success=False, handled=False)
        _as_test_smtp(server).auth_login = username
        return AuthResult(success=True, auth_data=username)

    async def handle_exception(self, error: Exception) -> str:
        self.owner._note_error(f"{type(error).__name__}: {error}")
        return f"451 4.3.0 Test server error ({type(error).__name__})"


# --------------------------------------------------------------------------------------
# SMTPTestServer
# --------------------------------------------------------------------------------------


class SMTPTestServer(_BackgroundServer):
    """An aiosmtpd server in a background thread, with TLS, AUTH and fault injection.

    Attributes (safe to read from the test thread):
    ``host``, ``port``; ``messages`` (accepted, i.e. answered 2xx after DATA);
    ``dropped`` (fully received but refused by a ``data`` fault, or the connection
    went away before the final reply); ``auth_attempts`` as (username, success);
    ``connections`` (TCP connections accepted; failed implicit-TLS handshakes are not
    counted); ``faults_applied`` as (stage, kind) in order; ``errors`` (exceptions
    inside the server, normally empty except after failed STARTTLS handshakes).
    ``faults`` may be replaced while running (budgets of ``fail_times`` restart).
    """

    def __init__(
        self,
        *,
        tls: TLSMode = "none",
        tls_files: TLSFiles | None = None,
        tls_cert: Literal["good", "wrong_host"] = "good",
        users: dict[str, str] | None = None,
        auth_required: bool | None = None,
        auth_require_tls: bool | None = None,
        require_starttls: bool = False,
        smtputf8: bool = True,
        size_limit: int | None = None,
        faults: Faults | None = None,
        hostname: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Configure (not start) the server.

        ``tls``: "none", "starttls" (offered after EHLO) or "ssl" (implicit TLS); both
        TLS modes need ``tls_files``; ``tls_cert="wrong_host"`` serves the certificate
        for ``wrong.example``.  ``users``: accounts for AUTH PLAIN/LOGIN (AUTH is only
        offered when given).  ``auth_required``: default True when ``users`` is given.
        ``auth_require_tls``: offer/accept AUTH only over TLS; default True for
        "starttls" (AUTH appears after STARTTLS), False otherwise.
        ``require_starttls``: refuse (530) everything but EHLO/NOOP/QUIT before STARTTLS.
        ``smtputf8``: advertise and accept SMTPUTF8.  ``size_limit``: advertise SIZE and
        refuse bigger messages with 552 (None: no SIZE, no limit).  ``faults``: see
        ``Faults``.  ``hostname``/``port``: bind address (``port=0`` picks a free port).
        """
        super().__init__(hostname=hostname, port=port, thread_name="smtp-test-server")
        if tls not in ("none", "starttls", "ssl"):
            raise ValueError(f"tls must be 'none', 'starttls' or 'ssl', not {tls!r}")
        if tls != "none" and tls_files is None:
            raise ValueError(f"tls={tls!r} needs tls_files")
        if require_starttls and tls != "starttls":
            raise ValueError("require_starttls needs tls='starttls'")
        if size_limit is not None and size_limit <= 0:
            raise ValueError("size_limit must be positive (or None for no limit)")
        self.tls: TLSMode = tls
        self.tls_files = tls_files
        self.tls_cert: Literal["good", "wrong_host"] = tls_cert
        self.users = dict(users) if users is not None else None
        self.auth_required = bool(users) if auth_required is None else auth_required
        if auth_require_tls is None:
            auth_require_tls = tls == "starttls"
        self.auth_require_tls = auth_require_tls
        self.require_starttls = require_starttls
        self.smtputf8 = smtputf8
        self.size_limit = size_limit

        self.messages: list[Received] = []
        self.dropped: list[Received] = []
        self.auth_attempts: list[tuple[str, bool]] = []
        self.connections = 0
        self.faults_applied: list[tuple[str, str]] = []
        self.errors: list[str] = []

        self._cond = threading.Condition()
        self._faults = faults
        self._fault_budget_used: dict[str, int] = {}
        self._live: set[_TestSMTP] = set()
        self._handler = _Handler(self)

    # ---- configuration ----

    @property
    def faults(self) -> Faults | None:
        return self._faults

    @faults.setter
    def faults(self, value: Faults | None) -> None:
        with self._cond:
            self._faults = value
            self._fault_budget_used = {}

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls == "none":
            return None
        assert self.tls_files is not None
        return self.tls_files.server_context(self.tls_cert)

    # ---- serving ----

    async def _serve(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> asyncio.Server:
        context = self._ssl_context()
        smtp_kwargs: dict[str, Any] = {
            "loop": loop,
            "hostname": SERVER_NAME,
            "ident": SERVER_IDENT,
            "data_size_limit": self.size_limit,
            "enable_SMTPUTF8": self.smtputf8,
            "decode_data": False,
            "tls_context": context if self.tls == "starttls" else None,
            "require_starttls": self.require_starttls,
            "auth_required": False,  # enforced by _TestSMTP, see there
            # aiosmtpd only knows STARTTLS; with implicit TLS every session is encrypted.
            "auth_require_tls": self.auth_require_tls and self.tls != "ssl",
            "auth_exclude_mechanism": [] if self.users else ["LOGIN", "PLAIN"],
            "authenticator": self._handler.authenticate,
        }

        def factory() -> _TestSMTP:
            return _TestSMTP(self, self._handler, **smtp_kwargs)

        return await loop.create_server(
            factory,
            sock=sock,
            ssl=context if self.tls == "ssl" else None,
            ssl_handshake_timeout=10.0 if self.tls == "ssl" else None,
        )

    def _abort_connections(self) -> None:
        for smtp in list(self._live):
            smtp.abort_connection()

    # ---- called from the server thread ----

    def _register(self, smtp: _TestSMTP) -> None:
        with self._cond:
            self.connections += 1
            self._live.add(smtp)

    def _unregister(self, smtp: _TestSMTP) -> None:
        with self._cond:
            self._live.discard(smtp)

    def _take_fault_budget(self, stage: str) -> bool:
        with self._cond:
            faults = self._faults
            if faults is None:
                return False
            if faults.fail_times is None:
                return True
            used = self._fault_budget_used.get(stage, 0)
            self._fault_budget_used[stage] = used + 1
            return used < faults.fail_times

    def _note_fault(self, stage: str, kind: str) -> None:
        with self._cond:
            self.faults_applied.append((stage, kind))

    def _note_auth(self, username: str, ok: bool) -> None:
        with self._cond:
            self.auth_attempts.append((username, ok))

    def _note_error(self, message: str) -> None:
        with self._cond:
            self.errors.append(message)

    def _record(self, received: Received, *, accepted: bool) -> None:
        with self._cond:
            (self.messages if accepted else self.dropped).append(received)
            self._cond.notify_all()

    # ---- helpers for tests ----

    def wait_for(self, count: int = 1, timeout: float = 60.0) -> list[Received]:
        """Block until ``messages`` has at least ``count`` entries; return a copy.

        Do not call this from a coroutine whose event loop also runs the client; use
        ``wait_for_async`` there.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"expected {count} message(s) within {timeout}s, got {len(self.messages)}")
            return list(self.messages)

    async def wait_for_async(self, count: int = 1, timeout: float = 60.0) -> list[Received]:
        """Async version of ``wait_for`` (polls, so never blocks the caller's loop)."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"expected {count} message(s) within {timeout}s, got {len(self.messages)}")
            await asyncio.sleep(0.01)
        with self._cond:
            return list(self.messages)


# --------------------------------------------------------------------------------------
# RawLineServer
# --------------------------------------------------------------------------------------

DEFAULT_RAW_SCRIPT: tuple[str, ...] = (
    "220 raw.localhost ESMTP ready",
    "250-raw.localhost\n250 8BITMIME",
)


def _encode_step(step: str | bytes) -> bytes:
    if isinstance(step, bytes):
        return step
    lines = step.replace("\r\n", "\n").rstrip("\n").split("\n")
    return "".join(f"{line}\r\n" for line in lines).encode("utf-8")


class RawLineServer(_BackgroundServer):
    """A scripted TCP server on a free loopback port.

    Modes:

    * ``"script"``: send ``script[0]`` on connect, then one further step per line
      received from the client (str steps get CRLF line ends; bytes are sent as is).
      When the script runs out: ``after_script="close"`` hangs up, ``"hang"`` keeps
      reading and never answers.  Default script: a 220 greeting and an EHLO reply.
    * ``"tls_only"``: like ``"script"``, but TLS is required from the first byte
      (needs ``tls_files``).
    * ``"silent"``: accept and never send a byte (connect/greeting timeouts).
    * ``"close"``: accept and close at once.

    ``received`` collects what clients sent (lines in script modes, raw chunks when
    silent), ``connections`` counts accepted connections.
    """

    def __init__(
        self,
        mode: RawMode = "script",
        *,
        script: Sequence[str | bytes] | None = None,
        after_script: Literal["close", "hang"] = "close",
        tls_files: TLSFiles | None = None,
        tls_cert: Literal["good", "wrong_host"] = "good",
        hostname: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(hostname=hostname, port=port, thread_name="raw-line-server")
        if mode not in ("script", "tls_only", "silent", "close"):
            raise ValueError(f"unknown RawLineServer mode {mode!r}")
        if mode == "tls_only" and tls_files is None:
            raise ValueError("mode='tls_only' needs tls_files")
        self.mode: RawMode = mode
        self.script: tuple[str | bytes, ...] = tuple(DEFAULT_RAW_SCRIPT if script is None else script)
        self.after_script: Literal["close", "hang"] = after_script
        self.tls_files = tls_files
        self.tls_cert: Literal["good", "wrong_host"] = tls_cert
        self.received: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> asyncio.Server:
        context = None
        if self.mode == "tls_only":
            assert self.tls_files is not None
            context = self.tls_files.server_context(self.tls_cert)
        return await asyncio.start_server(
            self._handle,
            sock=sock,
            ssl=context,
            ssl_handshake_timeout=10.0 if context is not None else None,
        )

    def _abort_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    def _note(self, data: bytes) -> None:
        with self._lock:
            self.received.append(data)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        self._writers.add(writer)
        try:
            if self.mode == "close":
                return
            if self.mode == "silent":
                await self._drain_silently(reader)
                return
            for index, step in enumerate(self.script):
                if index > 0:
                    line = await reader.readline()
                    if not line:
                        return
                    self._note(line)
                writer.write(_encode_step(step))
                await writer.drain()
            if self.after_script == "hang":
                await self._drain_silently(reader)
        except (ConnectionError, ssl.SSLError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _drain_silently(self, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(4096):
            self._note(chunk)
