"""The session that IMAP and POP3 share: a blocking client driven from asyncio.

`imaplib` and `poplib` block, so each command runs in a worker thread, one at a time
per connection. Both protocols connect, negotiate TLS, time their stages, fail, log
in and report in the same way; that is written here once, and each protocol
(`transport.imap`, `transport.pop3`) fills in its hooks: its own library's
exceptions, opening, closing. Failures of the network and of TLS are translated by
`transport.translate`, as for SMTP.

Credentials never leave the worker thread's innermost frame: a refused login is
raised with no exception chain, and every server text that reaches an error goes
through the login's mask (`transport.replies`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, ClassVar, Generic, Literal, ParamSpec, TypeVar

from mailwright.domain.smtp import Security
from mailwright.errors import (
    TargetAuthError,
    TargetConnectError,
    TargetError,
    TargetTimeoutError,
    TargetTLSError,
)
from mailwright.transport.base import (
    Endpoint,
    Login,
    ProtocolInfo,
    implicit_tls_hint,
    login_without_tls,
    ms,
    timed_stage,
)
from mailwright.transport.outbound import open_socket_blocking
from mailwright.transport.replies import NO_MASK, ReplyMask, quote_foreign, response_code
from mailwright.transport.report import build_report, probe
from mailwright.transport.sasl import BearerFailure, TokenRefusedError, bearer_login, token_refused
from mailwright.transport.tls import (
    NO_TLS_WARNING,
    UNVERIFIED_WARNING,
    CertificateInfo,
    TLSState,
    clear_text_login_warning,
    probe_implicit_tls,
    tls_state,
)
from mailwright.transport.translate import (
    disconnected,
    explain_open_failure,
    is_network_error,
    network_failure,
    timeout_failure,
    tls_failure_in,
    unverified,
)

P = ParamSpec("P")
T = TypeVar("T")

# Response codes that mean "try again later": IMAP's (RFC 5530) and POP3's (RFC 2449, 3206).
IMAP_TRANSIENT_CODES = frozenset({"UNAVAILABLE", "INUSE", "SERVERBUG", "LIMIT"})
POP3_TRANSIENT_CODES = frozenset({"SYS/TEMP", "IN-USE", "LOGIN-DELAY"})


@dataclass(frozen=True, slots=True)
class MailEndpoint(Endpoint):
    """A mailbox server (IMAP or POP3), resolved from a target's settings."""


E = TypeVar("E", bound=MailEndpoint)


@dataclass(frozen=True, slots=True)
class CredentialsOutcome:
    """What came of sending credentials; built in the worker thread, holds no secret."""

    kind: Literal["ok", "refused", "timeout", "lost"]
    text: str = ""
    # An OAuth2 login's error challenge (the server's JSON, decoded from base64), if one came.
    challenge: bytes = b""


class MailSession(Generic[E]):
    """A blocking protocol client driven from asyncio: one command at a time, each in a
    worker thread, with per-stage timings and errors translated at the seam.

    A cancelled command shuts the socket down, so its worker thread ends at once; the
    connection is then unusable.
    """

    protocol: ClassVar[ProtocolInfo]
    step_order: ClassVar[tuple[str, ...]]
    library_errors: ClassVar[tuple[type[Exception], ...]] = (OSError,)

    def __init__(self, endpoint: E) -> None:
        self.endpoint = endpoint
        self.timings: dict[str, float] = {}
        self.greeting = ""
        self.tls: TLSState | None = None
        self.authenticated_as: str | None = None
        self.auth_mechanism: str | None = None
        # Hides the login's password in every error this session raises (replies.py).
        self.mask: ReplyMask = NO_MASK
        # An OAuth2 key's first token was refused and a fresh one is being tried.
        self.token_refreshed = False
        self._socket: socket.socket | None = None
        self._lock = asyncio.Lock()

    # --- hooks for the protocols ------------------------------------------------

    def _live_socket(self) -> socket.socket | None:
        return self._socket

    def _client_file(self) -> IO[bytes] | None:
        """The file the protocol client reads from (it holds the socket open until closed)."""
        return None

    def _drop_client(self) -> None:
        """Forget the protocol client (its socket is closed by the caller)."""

    def _translate_library(self, exc: Exception, stage: str) -> tuple[TargetError, bool] | None:
        """A protocol library's exception as (error, connection lost), or None if not one."""
        return None

    def _open_blocking(self, login: Login | None) -> None:
        raise NotImplementedError

    def _choose_mechanism(self, login: Login) -> str:
        """The login mechanism to use with this server (raises when none will do)."""
        raise NotImplementedError

    def _authenticate(
        self,
        login: Login,
        send: Callable[[str], CredentialsOutcome],
        *,
        seen: Callable[[CredentialsOutcome], CredentialsOutcome] = lambda outcome: outcome,
    ) -> None:
        """The login every mailbox protocol shares: refuse a clear-text one, choose the mechanism,
        `send` the credentials (timed), and raise what a refusal means (`seen` adjusts the
        outcome's text for the protocol first: POP3's "-ERR")."""
        started = time.perf_counter()
        try:
            self._refuse_clear_text_login(login)
            mechanism = self._choose_mechanism(login)
            outcome = send(mechanism)
        finally:
            self.timings["login"] = self.timings.get("login", 0.0) + ms(started)
        failure = credentials_failure(
            self.endpoint,
            self.protocol,
            login,
            seen(outcome),
            mechanism=mechanism,
            refreshed=self.token_refreshed,
        )
        if failure is not None:
            if outcome.kind in ("timeout", "lost"):
                self._close_socket()
            raise self._failed(failure, "login")
        self.authenticated_as = login.username
        self.auth_mechanism = mechanism

    def _relogin_blocking(self, login: Login) -> None:
        """Log in again on the open connection (an OAuth2 key's fresh token after a refusal)."""
        raise NotImplementedError

    def _close_blocking(self, commit: bool) -> None:
        raise NotImplementedError

    # --- opening and closing ----------------------------------------------------

    async def open(self, login: Login | None) -> None:
        """Connect, negotiate TLS, log in; misconfigurations come back explained.

        An OAuth2 key's access token is fetched first (stage "token"): the session opens
        in a worker thread, which cannot await the key. A token the server refuses as
        invalid is refreshed once and tried once more on the same connection.
        """
        if self._live_socket() is not None:
            raise TargetError(
                f"already connected to {self.endpoint.address}", target=self.endpoint.target_name
            )
        self.mask = ReplyMask.of(login)
        self.token_refreshed = False
        try:
            if login is not None and login.tokens is not None:
                login = await self._bearer(login)
            try:
                await self._run(self._open_blocking, login)
            except TokenRefusedError as exc:
                if login is None or not exc.refresh_may_help or self._live_socket() is None:
                    raise
                login = await self._bearer(login, refresh=True)
                self.token_refreshed = True
                await self._run(self._relogin_blocking, login)
        except TargetError as exc:
            explained = await explain_open_failure(
                exc, endpoint=self.endpoint, protocol=self.protocol, peer_certificate=self._peer_certificate
            )
            await self.close()
            if explained is exc:
                raise
            raise explained from exc

    async def _bearer(self, login: Login, *, refresh: bool = False) -> Login:
        """`login` with the key's access token as its password; the mask hides that token too."""
        with timed_stage(self.timings, "token", failures=(), translate=_never):
            resolved = await bearer_login(login, target=self.endpoint.target_name, refresh=refresh)
        self.mask = self.mask.also(ReplyMask.of(resolved))
        return resolved

    async def close(self, *, commit: bool = True) -> None:
        """Log out politely (bounded by a short timeout) and close the socket; never raises."""
        if self._live_socket() is None:
            return
        try:
            await self._run(self._close_blocking, commit)
        except (TargetError, OSError):
            pass
        finally:
            self._close_socket()  # a no-op when a cancelled logout already released it

    async def _run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        async with self._lock:
            work = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
            try:
                return await asyncio.shield(work)
            except TargetError as exc:  # every error of every command leaves through here
                self.mask.error(exc)
                raise
            except asyncio.CancelledError:
                # The worker fails fast now; close the socket once it has let go.
                finish = self._release()
                work.add_done_callback(lambda done: _finish_abandoned(done, finish))
                raise

    def _connect_socket(self) -> socket.socket:
        """TCP connect, then the TLS handshake for implicit TLS (stages connect and tls)."""
        ep = self.endpoint
        with self._stage("connect"):
            # Resolved and checked against the outbound policy, then connected to a checked address.
            sock = open_socket_blocking(ep.host, ep.port, timeout=ep.connect_timeout, target=ep.target_name)
        self._socket = sock
        if ep.security is Security.SSL:
            with self._stage("tls"):
                sock = ep.ssl_context.wrap_socket(sock, server_hostname=ep.host)
            self._socket = sock
            self.tls = tls_state(sock, ep.ssl_context)
        return sock

    def _release(self) -> Callable[[], None]:
        """Take the connection away: shut the socket down now (waking a blocked worker);
        the function returned closes the socket and the client's file."""
        sock, file = self._live_socket(), self._client_file()
        self._drop_client()
        self._socket = None
        _shutdown(sock)

        def close() -> None:
            for item in (file, sock):
                if item is not None:
                    with contextlib.suppress(OSError):
                        item.close()

        return close

    def _close_socket(self) -> None:
        self._release()()

    def _stage(self, stage: str) -> contextlib.AbstractContextManager[None]:
        """Time a stage and translate its failures (a lost connection is closed)."""
        return timed_stage(
            self.timings,
            stage,
            failures=self.library_errors,
            translate=lambda exc: self._translate(exc, stage),
        )

    def _translate(self, exc: Exception, stage: str) -> TargetError:
        translated = self._translate_library(exc, stage)
        if translated is None:
            translated = translate_os_error(exc, stage=stage, endpoint=self.endpoint, protocol=self.protocol)
        error, lost = translated
        if lost:
            self._close_socket()
        return error

    def _failed(self, error: TargetError, stage: str) -> TargetError:
        error.stage = stage
        return error

    def _refuse_clear_text_login(self, login: Login) -> None:
        """Checked before any credential is sent (TLS is up by then unless the target says none)."""
        refused = login_without_tls(self.endpoint, self.protocol, login, tls_up=self.tls is not None)
        if refused is not None:
            raise self._failed(refused, "login")

    # --- explaining failures ----------------------------------------------------

    async def _peer_certificate(self) -> CertificateInfo | None:
        """The server's certificate, fetched without verification, to explain a failure."""
        ep = self.endpoint
        if ep.security is Security.SSL:
            return await probe_implicit_tls(ep.host, ep.port, wait=min(5.0, ep.connect_timeout))
        session = type(self)(unverified(ep))
        try:
            await session.open(None)
        except TargetError:
            return None
        finally:
            await session.close()
        return session.tls.certificate if session.tls else None

    # --- reports ----------------------------------------------------------------

    def report(
        self,
        *,
        login: Login | None,
        error: TargetError | None,
        capabilities: dict[str, Any],
        warnings: list[str],
        total_ms: float,
    ) -> dict[str, Any]:
        return build_report(
            self,
            protocol=self.protocol,
            step_order=self.step_order,
            login=login,
            error=error,
            capabilities=capabilities,
            warnings=warnings,
            total_ms=total_ms,
        )

    def common_warnings(self, login: Login | None) -> list[str]:
        ep = self.endpoint
        out: list[str] = []
        if ep.security is Security.NONE:
            if login is not None:
                out.append(clear_text_login_warning(login.key_name, ssl_port=self.protocol.ssl_port))
            out.append(NO_TLS_WARNING)
        elif ep.ssl_context.verify_mode == ssl.CERT_NONE:
            out.append(UNVERIFIED_WARNING)
        if login is None:
            out.append(
                f"no account key: a {self.protocol.name} server shows a mailbox only after a login, "
                "so reading mail needs one"
            )
        return out

    async def run_probe(self, login: Login | None) -> tuple[TargetError | None, float]:
        """Open and close once, for a report: the error (if any) and the total time in ms."""
        return await probe(self, login)


def _shutdown(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            # The plain socket's shutdown, also for TLS sockets: wakes a blocked reader at once.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _never(exc: Exception) -> TargetError:
    raise AssertionError("no failures are translated") from exc


def _finish_abandoned(done: asyncio.Future[Any], finish: Callable[[], None]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved: the caller was cancelled and does not want it
    finish()


def no_starttls_error(endpoint: MailEndpoint, protocol: ProtocolInfo) -> TargetTLSError:
    ep = endpoint
    if ep.port == protocol.ssl_port:
        hint = implicit_tls_hint(ep.port)
    else:
        hint = (
            f"choose ssl if the port speaks TLS from the start (like {protocol.ssl_port}), "
            "or none only on a trusted network"
        )
    return TargetTLSError(
        f"{ep.address} does not offer {protocol.starttls_command}, and this target is set to starttls",
        target=ep.target_name,
        hint=hint,
    )


def login_after_tls_hint(protocol: ProtocolInfo) -> str:
    return f"the server allows login only after {protocol.starttls_command}: choose starttls"


def auth_refused_hint(host: str) -> str:
    """How to fix a refused password login, with the provider's peculiarities."""
    name = host.lower().rstrip(".")
    if name.endswith(("office365.com", "outlook.com", "hotmail.com", "live.com")):
        return (
            "Microsoft 365 and Outlook.com turned off password (basic) authentication for IMAP "
            "and POP3: an administrator must allow it for this mailbox; otherwise check the "
            "account key's username and password"
        )
    if name.endswith(("gmail.com", "googlemail.com", "yahoo.com", "mail.me.com", "icloud.com", "aol.com")):
        return (
            "this provider needs an app password, not the account password, and IMAP/POP access "
            "turned on in the mailbox settings"
        )
    return (
        "check the account key's username and password; Gmail, Yahoo and iCloud need an app "
        "password, and Microsoft 365 refuses passwords where basic authentication is turned off"
    )


def auth_refused(endpoint: MailEndpoint, protocol: ProtocolInfo, login: Login, text: str) -> TargetError:
    """The error for a login the server refused; transient codes are retried later."""
    ep = endpoint
    text = quote_foreign(ReplyMask.of(login)(text))
    code = response_code(text)
    if code in IMAP_TRANSIENT_CODES or code in POP3_TRANSIENT_CODES:
        return TargetConnectError(
            f"{ep.address} could not log in account key {login.key_name!r} "
            f"(user {login.username}) for now: {text}",
            target=ep.target_name,
            hint="try again later",
        )
    if "disallowed" in text.lower() or code == "PRIVACYREQUIRED":
        return TargetAuthError(
            f"{ep.address} refuses logins without TLS: {text}",
            target=ep.target_name,
            hint=login_after_tls_hint(protocol),
        )
    return TargetAuthError(
        f"{ep.address} refused the login of account key {login.key_name!r} (user {login.username}): {text}",
        target=ep.target_name,
        hint=auth_refused_hint(ep.host),
    )


def credentials_failure(
    endpoint: MailEndpoint,
    protocol: ProtocolInfo,
    login: Login,
    outcome: CredentialsOutcome,
    *,
    mechanism: str = "",
    refreshed: bool = False,
) -> TargetError | None:
    """The error for a login that did not succeed, or None if it did.

    For an OAuth2 key (`login.tokens` set, its token as the password) a refusal is a
    `TokenRefusedError` with the server's JSON decoded; `refreshed` says the token was
    already a fresh one.
    """
    ep = endpoint
    if outcome.kind == "ok":
        return None
    if outcome.kind == "refused":
        code = response_code(outcome.text)
        transient = code in IMAP_TRANSIENT_CODES or code in POP3_TRANSIENT_CODES
        if login.tokens is not None and not transient:
            failure = BearerFailure.parse(outcome.challenge) if outcome.challenge else None
            return token_refused(ep, login, mechanism, outcome.text, failure, refreshed=refreshed)
        return auth_refused(ep, protocol, login, outcome.text)
    if outcome.kind == "timeout":
        return TargetTimeoutError(
            f"{ep.address} did not answer the login in time",
            target=ep.target_name,
            hint=f"raise the command timeout (now {ep.command_timeout:g} s) or check the server's health",
        )
    text = quote_foreign(ReplyMask.of(login)(outcome.text))
    return TargetConnectError(
        f"{ep.address} closed the connection during the login ({text})", target=ep.target_name
    )


def translate_os_error(
    exc: BaseException, *, stage: str, endpoint: MailEndpoint, protocol: ProtocolInfo
) -> tuple[TargetError, bool]:
    """The most specific Mailwright error for a socket or `ssl` failure; the connection is lost."""
    ep = endpoint
    tls_error = tls_failure_in(exc, stage=stage, endpoint=ep, protocol=protocol)
    if tls_error is not None:
        return tls_error, True
    if isinstance(exc, TimeoutError):
        return timeout_failure(ep, protocol, stage), True
    if isinstance(exc, OSError) and is_network_error(exc):
        return network_failure(ep, protocol, exc, during=stage), True
    return disconnected(ep, protocol, stage, str(exc)), True
