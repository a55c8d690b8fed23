"""The SMTP client: the only code that opens SMTP sockets.

Built on aiosmtplib's connection and command layer; every library, `ssl` and
socket exception is translated here into the Mailwright error tree, with a
diagnosis of the common misconfigurations (wrong TLS mode for the port,
untrusted certificates, AUTH only after STARTTLS). SMTP's replies are recognised
here; failures of the network and of TLS are translated by `transport.translate`,
as for IMAP and POP3.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import aiosmtplib
from aiosmtplib import SMTPStatus

from mailwright.domain.smtp import Capabilities, Security, parse_ehlo
from mailwright.errors import (
    RecipientsRefusedError,
    TargetAuthError,
    TargetConnectError,
    TargetDeferredError,
    TargetError,
    TargetRejectedError,
    TargetTimeoutError,
    TargetTLSError,
)
from mailwright.transport.base import (
    Endpoint,
    Login,
    ProtocolInfo,
    clear_text_login_hint,
    implicit_tls_hint,
    login_without_tls,
    ms,
    timed_stage,
)
from mailwright.transport.outbound import open_socket
from mailwright.transport.replies import NO_MASK, ReplyMask, bound_reply, quote_foreign
from mailwright.transport.report import build_report, probe
from mailwright.transport.sasl import (
    BearerFailure,
    TokenRefusedError,
    bearer_login,
    carries_credentials,
    choose_bearer_mechanism,
    dummy_response,
    initial_response,
    no_bearer_mechanism,
    token_refused,
)
from mailwright.transport.tls import (
    NO_TLS_WARNING,
    UNVERIFIED_WARNING,
    CertificateInfo,
    TLSState,
    clear_text_login_warning,
    describe_verification_failure,
    tls_state,
)
from mailwright.transport.translate import (
    causes,
    disconnected,
    explain_open_failure,
    network_failure,
    not_connected,
    timeout_failure,
    tls_failure_in,
    unverified,
)

SMTP = ProtocolInfo(name="SMTP", ssl_port=465, starttls_port=587, starttls_command="STARTTLS")

# The stages a connection test reports, in order.
_STEP_ORDER = ("token", "connect", "ehlo", "starttls", "auth", "quit")

# Preferred first; PLAIN and LOGIN only ever run over TLS unless the target says none.
# An OAuth2 key uses OAUTHBEARER or XOAUTH2 instead (transport.sasl).
_MECHANISMS = {"PLAIN": "auth_plain", "LOGIN": "auth_login", "CRAM-MD5": "auth_crammd5"}

# An SMTP command line, CRLF included (RFC 5321 4.5.3.1.4).
_COMMAND_LINE_LIMIT = 512

Stage = Literal["token", "connect", "tls", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "quit"]


@dataclass(frozen=True, slots=True)
class SMTPEndpoint(Endpoint):
    """An SMTP server, resolved from a target's settings."""

    starttls_required: bool = True
    ehlo_name: str | None = None
    data_timeout: float = 600.0  # the reply to the end of data (RFC 5321 4.5.3.2.6)


@dataclass(frozen=True, slots=True)
class RecipientResult:
    address: str
    status: Literal["accepted", "refused"]
    code: int | None = None
    reply: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "status": self.status,
            "code": self.code,
            "reply": self.reply,
        }


@dataclass(slots=True)
class Delivery:
    """What the server said about one message, and how it travelled."""

    recipients: list[RecipientResult]
    code: int
    reply: str
    size: int
    timings: dict[str, float] = field(default_factory=dict)
    tls: TLSState | None = None


@dataclass(slots=True)
class SMTPConnection:
    """The opening of an SMTP session (connect, TLS, EHLO, AUTH), with diagnoses.

    Mail transactions then go through `pipeline.Session`, which takes the
    transport over (`detach`); a connection test just opens and closes.
    """

    endpoint: SMTPEndpoint
    timings: dict[str, float] = field(default_factory=dict)
    capabilities: Capabilities = field(default_factory=Capabilities)
    greeting: str = ""
    tls: TLSState | None = None
    authenticated_as: str | None = None
    auth_mechanism: str | None = None
    # Hides the login's password in every server text this connection keeps (replies.py).
    mask: ReplyMask = NO_MASK
    _client: aiosmtplib.SMTP | None = None

    # --- opening ------------------------------------------------------------

    async def open(self, login: Login | None) -> None:
        """Connect, negotiate TLS, EHLO and AUTH; misconfigurations come back explained.

        Every error is masked with the login's secret forms before it leaves. An OAuth2
        key's access token is fetched first (stage "token"), before connecting.
        """
        self.mask = ReplyMask.of(login)
        try:
            try:
                if login is not None and login.tokens is not None:
                    login = await self._bearer(login)
                await self._open(login)
            except TargetError as exc:
                explained = await explain_open_failure(
                    exc,
                    endpoint=self.endpoint,
                    protocol=SMTP,
                    peer_certificate=lambda: peer_certificate(self.endpoint),
                )
                if explained is exc:
                    raise
                raise explained from exc
        except TargetError as exc:
            self.mask.error(exc)
            raise

    async def _open(self, login: Login | None) -> None:
        ep = self.endpoint
        with self._stage("connect"):
            # Resolved and checked against the outbound policy here; the library gets the socket.
            sock = await open_socket(ep.host, ep.port, timeout=ep.connect_timeout, target=ep.target_name)
        self._client = aiosmtplib.SMTP(
            hostname=ep.host,
            port=None,
            sock=sock,
            use_tls=ep.security is Security.SSL,
            start_tls=False,
            tls_context=ep.ssl_context,
            timeout=ep.command_timeout,
            local_hostname=ep.ehlo_name or _default_ehlo_name(),
        )
        with self._stage("connect"):
            response = await self._client.connect(timeout=ep.connect_timeout)
        self.greeting = quote_foreign(self.mask(f"{response.code} {response.message}"))
        if ep.security is Security.SSL:
            self.tls = self._tls_state()
        await self._ehlo()
        if ep.security is Security.STARTTLS:
            await self._starttls(login)
        if login is not None:
            await self._login(login)

    async def _bearer(self, login: Login, *, refresh: bool = False) -> Login:
        """`login` with the key's access token as its password; the mask hides that token too."""
        with timed_stage(self.timings, "token", failures=(), translate=_never):
            resolved = await bearer_login(login, target=self.endpoint.target_name, refresh=refresh)
        self.mask = self.mask.also(ReplyMask.of(resolved))
        return resolved

    async def _ehlo(self) -> None:
        client = self._require_client()
        with self._stage("ehlo"):
            response = await client.ehlo()
        if response.code != SMTPStatus.completed:
            reply = self.mask(response.message)
            raise TargetRejectedError(
                f"{self.endpoint.address} refused EHLO: {response.code} {quote_foreign(reply)}",
                code=response.code,
                reply=bound_reply(reply),
                target=self.endpoint.target_name,
                hint="set an EHLO name the server accepts (--ehlo-name)",
            )
        self.capabilities = parse_ehlo(f"{response.code} {response.message}")

    async def _starttls(self, login: Login | None) -> None:
        ep = self.endpoint
        if not self.capabilities.starttls:
            if login is not None:
                # A man in the middle strips STARTTLS from EHLO to read the login: never go on.
                refused = TargetTLSError(
                    f"{ep.address} did not offer STARTTLS, so the login of account key "
                    f"{login.key_name!r} would travel in clear text; it was not sent",
                    target=ep.target_name,
                    hint=clear_text_login_hint(ep.port, SMTP),
                )
                refused.stage = "starttls"
                raise refused
            if not ep.starttls_required:
                return  # an open relay without a login (port 25): mail goes as the server allows
            raise TargetTLSError(
                f"{ep.address} does not offer STARTTLS, and this target requires it",
                target=ep.target_name,
                hint=_no_starttls_hint(ep.port),
            )
        client = self._require_client()
        with self._stage("starttls"):
            await client.starttls(tls_context=ep.ssl_context, server_hostname=ep.host)
        self.tls = self._tls_state()
        await self._ehlo()
        # The post-TLS EHLO no longer lists STARTTLS; the report should still say it was offered.
        self.capabilities = replace(self.capabilities, starttls=True)

    async def _login(self, login: Login) -> None:
        ep = self.endpoint
        caps = self.capabilities
        refused = login_without_tls(ep, SMTP, login, tls_up=self.tls is not None)
        if refused is not None:
            refused.stage = "auth"
            raise refused
        if not caps.auth:
            raise TargetAuthError(
                f"{ep.address} offers no AUTH, but this target uses account key {login.key_name!r}",
                target=ep.target_name,
                hint=self._no_auth_hint(),
            )
        if login.tokens is not None:
            await self._bearer_auth(login)
            return
        client = self._require_client()
        mechanism = next((m for m in _MECHANISMS if m in caps.auth), None)
        if mechanism is None:
            raise TargetAuthError(
                f"{ep.address} offers AUTH {' '.join(caps.auth)}, none of which Mailwright speaks "
                f"({', '.join(_MECHANISMS)})",
                target=ep.target_name,
            )
        with self._stage("auth"):
            # One mechanism, one attempt: retrying with another after a refusal
            # counts twice against providers that lock accounts after failures.
            method = getattr(client, _MECHANISMS[mechanism])
            try:
                await method(login.username, login.password.reveal())
            except aiosmtplib.SMTPAuthenticationError as exc:
                if 400 <= exc.code < 500:
                    raise reply_error(
                        ep, "could not check the login for now", exc.code, exc.message, mask=self.mask
                    ) from None
                raise _auth_refused(ep, login, exc.code, self.mask(exc.message)) from None
        self.authenticated_as = login.username
        self.auth_mechanism = mechanism

    async def _bearer_auth(self, login: Login) -> None:
        """AUTH OAUTHBEARER or XOAUTH2 with the key's token; one refresh and retry if it is refused."""
        ep = self.endpoint
        mechanism = choose_bearer_mechanism(self.capabilities.auth)
        if mechanism is None:
            raise self._auth_failed(
                no_bearer_mechanism(ep, login, "AUTH " + " ".join(self.capabilities.auth))
            )
        try:
            await self._bearer_attempt(login, mechanism, refreshed=False)
        except TokenRefusedError as exc:
            if not exc.refresh_may_help:
                raise
            login = await self._bearer(login, refresh=True)
            await self._bearer_attempt(login, mechanism, refreshed=True)
        self.authenticated_as = login.username
        self.auth_mechanism = mechanism

    async def _bearer_attempt(self, login: Login, mechanism: str, *, refreshed: bool) -> None:
        ep = self.endpoint
        token = login.password.reveal()
        if not carries_credentials(mechanism, login.username, token):
            raise self._auth_failed(
                TargetAuthError(
                    f"the username or access token of account key {login.key_name!r} holds a control "
                    f"character, which {mechanism} cannot carry",
                    target=ep.target_name,
                    hint="check the key's username",
                )
            )
        client = self._require_client()
        message = initial_response(
            mechanism, username=login.username, token=token, host=ep.host, port=ep.port
        )
        failure: BearerFailure | None = None
        encoded = base64.b64encode(message)
        with self._stage("auth"):
            if len(encoded) + len(mechanism) + 7 <= _COMMAND_LINE_LIMIT:
                response = await client.execute_command(b"AUTH", mechanism.encode(), encoded)
            else:
                # Too long for the command line (RFC 4954 4): the message answers the empty
                # challenge instead, where servers take up to 12288 octets (Postfix cuts
                # AUTH lines at 2048, and access tokens from Microsoft run past that).
                response = await client.execute_command(b"AUTH", mechanism.encode())
                if response.code == SMTPStatus.auth_continue:
                    response = await client.execute_command(encoded)
            if response.code == SMTPStatus.auth_continue:
                # An error challenge (RFC 7628 3.2.2): base64 JSON; the dummy answer brings the refusal.
                failure = BearerFailure.parse(response.message, encoded=True)
                answer = base64.b64encode(dummy_response(mechanism))
                response = await client.execute_command(answer)
        if response.code == SMTPStatus.auth_successful:
            return
        if 400 <= response.code < 500:
            raise self._auth_failed(
                reply_error(
                    ep, "could not check the login for now", response.code, response.message, mask=self.mask
                )
            )
        raise self._auth_failed(
            token_refused(
                ep, login, mechanism, f"{response.code} {response.message}", failure, refreshed=refreshed
            )
        )

    def _auth_failed(self, error: TargetError) -> TargetError:
        error.stage = "auth"
        return self.mask.error(error)

    def _no_auth_hint(self) -> str:
        ep = self.endpoint
        if ep.security is Security.NONE and self.capabilities.starttls:
            return "the server offers AUTH only after STARTTLS: choose starttls"
        return (
            "choose No Account Keys if this server is an open relay, or use its submission "
            "port (587 with starttls, 465 with ssl), where AUTH is offered"
        )

    def _tls_state(self) -> TLSState:
        client = self._require_client()
        state = tls_state(client.get_transport_info("ssl_object"), self.endpoint.ssl_context)
        # TLS was negotiated, even if the transport no longer tells how.
        return state or TLSState(version=None, cipher=None, certificate=None, verified=False)

    # --- handing over --------------------------------------------------------

    def detach(self) -> asyncio.Transport:
        """The opened transport, for `pipeline.Session` to carry the mail transactions.

        aiosmtplib reads one reply per command it wrote, so it cannot pipeline;
        after the handshake this connection is done and the session owns the socket.
        """
        client = self._require_client()
        # Not `isinstance(…, asyncio.Transport)`: uvloop's transports (uvicorn runs `serve` on
        # uvloop when it is installed) do not derive from it, yet are full transports.
        transport = cast(asyncio.Transport | None, client.transport)
        if transport is None or transport.is_closing():
            raise TargetConnectError(
                f"the connection to {self.endpoint.address} closed after the handshake",
                target=self.endpoint.target_name,
            )
        # Forget the transport without closing it: it now belongs to the session.
        client.transport = None
        client.protocol = None
        self._client = None
        return transport

    # --- closing --------------------------------------------------------------

    def abort(self) -> None:
        """Close at once, without QUIT (the task is being cancelled)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        started = time.perf_counter()
        try:
            await asyncio.wait_for(client.quit(), timeout=min(5.0, self.endpoint.command_timeout))
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()
        self.timings["quit"] = ms(started)

    async def __aenter__(self) -> SMTPConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- helpers --------------------------------------------------------------

    def _require_client(self) -> aiosmtplib.SMTP:
        if self._client is None:
            raise not_connected(self.endpoint)
        return self._client

    def _stage(self, stage: Stage) -> AbstractContextManager[None]:
        """Time a stage and translate its failures (the connection is closed on any)."""
        return timed_stage(
            self.timings,
            stage,
            failures=(aiosmtplib.SMTPException, OSError, TimeoutError),
            translate=lambda exc: self._translate(exc, stage),
            # At AUTH the library's exception holds the server's raw reply: do not chain it.
            keep_cause=stage != "auth",
        )

    def _translate(self, exc: Exception, stage: Stage) -> TargetError:
        if self._client is not None:
            self._client.close()
        return self.mask.error(translate(exc, stage=stage, endpoint=self.endpoint, mask=self.mask))


async def peer_certificate(endpoint: SMTPEndpoint) -> CertificateInfo | None:
    """The server's certificate, fetched without verification, to explain a failure."""
    connection = SMTPConnection(unverified(endpoint))
    try:
        await connection._open(None)
    except TargetError:
        return None
    finally:
        await connection.close()
    return connection.tls.certificate if connection.tls else None


async def connection_report(endpoint: SMTPEndpoint, login: Login | None) -> dict[str, Any]:
    """Connect, TLS, EHLO, AUTH, QUIT; the report `targets test` shows, in the shape of
    `transport.report` (capabilities as EHLO announced them). On failure the error names the fix.
    """
    connection = SMTPConnection(endpoint)
    error, total = await probe(connection, login)
    return build_report(
        connection,
        protocol=SMTP,
        step_order=_STEP_ORDER,
        login=login,
        error=error,
        capabilities=connection.capabilities.as_dict(),
        warnings=_report_warnings(connection, login),
        total_ms=total,
    )


def _report_warnings(connection: SMTPConnection, login: Login | None) -> list[str]:
    ep = connection.endpoint
    out: list[str] = []
    if ep.ssl_context.verify_mode == ssl.CERT_NONE:
        out.append(UNVERIFIED_WARNING)
    if ep.security is Security.NONE:
        if login is not None:
            out.append(clear_text_login_warning(login.key_name, ssl_port=SMTP.ssl_port))
        out.append(NO_TLS_WARNING)
    elif (
        connection.greeting
        and ep.security is Security.STARTTLS
        and not connection.capabilities.starttls
        and connection.tls is None
    ):
        out.append("the server did not offer STARTTLS: mail would go in plain text")
    caps = connection.capabilities
    if login is None and caps.auth:
        out.append(
            f"the server offers AUTH ({' '.join(caps.auth)}) but this target has No Account "
            "Keys: if it requires a login, sends fail with 530"
        )
    return out


def _never(exc: Exception) -> TargetError:
    raise AssertionError("no failures are translated") from exc


def _default_ehlo_name() -> str:
    name = socket.gethostname()
    return name if name and "." in name else "localhost.localdomain"


def human_size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MiB"
    if size >= 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size} bytes"


def _no_starttls_hint(port: int) -> str:
    if port == SMTP.ssl_port:
        return implicit_tls_hint(port)
    return "choose ssl if the port speaks TLS from the start, or none only on a trusted network"


def _auth_refused(ep: SMTPEndpoint, login: Login, code: int, reply: str) -> TargetAuthError:
    hint = "check the account key's username and password"
    if ep.host.endswith(("gmail.com", "googlemail.com", "yahoo.com", "mail.me.com")):
        hint += "; this provider needs an app password, not the account password"
    return TargetAuthError(
        f"{ep.address} refused the login of account key {login.key_name!r} "
        f"(user {login.username}): {code} {quote_foreign(reply)}",
        target=ep.target_name,
        hint=hint,
    )


def reply_error(
    ep: SMTPEndpoint,
    what: str,
    code: int,
    reply: str,
    recipient: str | None = None,
    *,
    hint: str | None = None,
    mask: ReplyMask = NO_MASK,
) -> TargetError:
    """The error for a refusal; the reply is masked, and quoted bounded in the message."""
    cls = TargetDeferredError if 400 <= code < 500 else TargetRejectedError
    reply = mask(reply)
    return cls(
        f"{ep.address} {what}: {code} {quote_foreign(reply)}",
        code=code,
        reply=bound_reply(reply),
        recipient=recipient,
        target=ep.target_name,
        hint=hint,
    )


def recipients_refused(
    ep: SMTPEndpoint, results: list[RecipientResult], *, allowed_partial: bool
) -> RecipientsRefusedError:
    refused = [r for r in results if r.status == "refused"]
    listing = "; ".join(
        f"{r.address}: {r.code} {r.reply}" if r.code else f"{r.address}: {r.reply}" for r in refused
    )
    transient = all(r.code is not None and 400 <= r.code < 500 for r in refused)
    if allowed_partial:
        message = f"{ep.address} refused every recipient ({listing}); nothing was sent"
        hint = None
    else:
        message = (
            f"{ep.address} refused {len(refused)} of {len(results)} recipients ({listing}); nothing was sent"
        )
        hint = "fix or remove those addresses, or set continue_if_one_address_valid to send to the others"
    return RecipientsRefusedError(
        message,
        recipients=[r.as_dict() for r in results],
        transient=transient,
        target=ep.target_name,
        hint=hint,
    )


def translate(
    exc: BaseException, *, stage: Stage, endpoint: SMTPEndpoint, mask: ReplyMask = NO_MASK
) -> TargetError:
    """The most specific Mailwright error for a library exception at a stage."""
    ep = endpoint
    tls_error = tls_failure_in(exc, stage=stage, endpoint=ep, protocol=SMTP)
    if tls_error is not None:
        return tls_error
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
        return reply_error(ep, "refused the connection", exc.code, exc.message, mask=mask)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return reply_error(ep, f"answered {stage.upper()} with an error", exc.code, exc.message, mask=mask)
    if isinstance(exc, TimeoutError):
        return translate_timeout(ep, stage)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected) or (
        stage in ("connect", "tls", "starttls") and "disconnect" in str(exc).lower()
    ):
        return translate_disconnect(ep, stage)
    os_error = next((e for e in causes(exc) if isinstance(e, OSError) and e.errno is not None), None)
    if os_error is not None:
        # Named as a failure to connect whatever the stage, as SMTP errors always were.
        return network_failure(ep, SMTP, os_error, during=None)
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        return translate_disconnect(ep, stage)
    return TargetError(
        f"{ep.address}: {stage} failed: {quote_foreign(mask(str(exc)))}", target=ep.target_name
    )


def translate_timeout(ep: SMTPEndpoint, stage: Stage) -> TargetTimeoutError:
    return timeout_failure(ep, SMTP, stage)


def translate_disconnect(ep: SMTPEndpoint, stage: Stage) -> TargetConnectError:
    return disconnected(ep, SMTP, stage)


__all__ = [
    "SMTP",
    "Delivery",
    "Login",
    "RecipientResult",
    "SMTPConnection",
    "SMTPEndpoint",
    "TLSState",
    "connection_report",
    "describe_verification_failure",
    "translate",
]
