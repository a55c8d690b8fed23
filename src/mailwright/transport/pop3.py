"""The POP3 client: the only code that opens POP3 sockets.

Built on the standard library's `poplib`, run in worker threads by the session it
shares with IMAP (`transport.session.MailSession`: connecting, timing, TLS and the
translation of failures). Mailwright opens the socket itself, sends credentials without
an audit event, reads lines of any length a server sends (poplib stops at 2048
bytes), and tells a server's `-ERR` answer (the connection stays usable) from a lost
connection. An OAuth2 key logs in with SASL OAUTHBEARER or XOAUTH2 (`transport.sasl`).

POP3 deletions take effect only at QUIT: `close()` commits them; leaving an
`async with` block with an exception sends RSET first, so a failed run deletes nothing.
"""

from __future__ import annotations

import base64
import binascii
import poplib
import re
import socket
import ssl
from dataclasses import dataclass
from typing import IO, Any

from mailwright.domain.smtp import Security
from mailwright.errors import TargetAuthError, TargetConnectError, TargetError, ValidationError
from mailwright.transport.base import Login, ProtocolInfo
from mailwright.transport.replies import quote_foreign, response_code, response_text
from mailwright.transport.sasl import (
    carries_credentials,
    choose_bearer_mechanism,
    dummy_response,
    initial_response,
    no_bearer_mechanism,
)
from mailwright.transport.session import (
    POP3_TRANSIENT_CODES,
    CredentialsOutcome,
    MailEndpoint,
    MailSession,
    login_after_tls_hint,
    no_starttls_error,
)
from mailwright.transport.tls import tls_state
from mailwright.transport.translate import disconnected, not_connected

POP3 = ProtocolInfo(name="POP3", ssl_port=995, starttls_port=110, starttls_command="STLS")

# Longest response line accepted. RFC 5322 allows 998 octets, but real mail has
# longer lines; poplib's own limit (2048) would fail on them.
_MAX_LINE = 1024 * 1024

_STEP_ORDER = ("token", "connect", "tls", "capability", "starttls", "login", "logout")


@dataclass(frozen=True, slots=True)
class POP3Endpoint(MailEndpoint):
    """A POP3 server: 995 with ssl, 110 with starttls."""


class ServerRefusal(Exception):
    """A `-ERR` answer: the server refused one command; the connection stays usable."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply.decode("utf-8", "replace"))
        self.reply = reply


class ProtocolFailure(Exception):
    """The server closed the connection or sent something that is not POP3."""


class _POP3(poplib.POP3):
    """poplib on a socket Mailwright opened, with its own line reading and credentials path."""

    def __init__(self, sock: socket.socket, host: str, port: int) -> None:
        self._premade = sock
        try:
            super().__init__(host, port)  # reads the greeting
        except BaseException:
            # poplib leaves its file open when the greeting fails; it would keep the socket alive.
            file = self.__dict__.get("file")
            if file is not None:
                file.close()
            raise

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return self._premade

    def _getline(self) -> tuple[bytes, int]:
        # Used by every poplib command: longer lines than poplib's 2048 bytes, and
        # failures that say what happened.
        line = self.file.readline(_MAX_LINE + 1)
        if not line:
            raise ProtocolFailure("the server closed the connection")
        if len(line) > _MAX_LINE:
            raise ProtocolFailure(f"the server sent a line longer than {_MAX_LINE} bytes")
        octets = len(line)
        if line.endswith(b"\r\n"):
            return line[:-2], octets
        return line.rstrip(b"\r\n"), octets

    def _getresp(self) -> bytes:
        line, _octets = self._getline()
        if line.startswith(b"-ERR"):
            raise ServerRefusal(line)
        if not line.startswith(b"+"):
            raise ProtocolFailure(f"unexpected answer {line[:80]!r}")
        return line

    def command(self, line: str) -> bytes:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")
        return self._getresp()

    def secret_command(self, line: bytes) -> bytes:
        """A line with a credential: sent without poplib's audit event and debug output."""
        self.sock.sendall(line + b"\r\n")
        return self._getresp()

    def multiline(self, line: str) -> list[bytes]:
        """A command whose answer is a dot-terminated list (dot-stuffing removed)."""
        self.command(line)
        lines: list[bytes] = []
        while True:
            item, _octets = self._getline()
            if item == b".":
                return lines
            lines.append(item[1:] if item.startswith(b"..") else item)

    def start_tls(self, context: ssl.SSLContext) -> None:
        self.command("STLS")
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        self.file = self.sock.makefile("rb")


class POP3Connection(MailSession[POP3Endpoint]):
    """One POP3 session: open (connect, TLS, CAPA, login), read and delete mail, close.

    Use as `async with POP3Connection(endpoint) as pop: await pop.open(login)`.
    Message numbers are those of this session; UIDL gives the ids that last.
    """

    protocol = POP3
    step_order = _STEP_ORDER
    library_errors = (OSError, ServerRefusal, ProtocolFailure, poplib.error_proto, ValueError)

    def __init__(self, endpoint: POP3Endpoint) -> None:
        super().__init__(endpoint)
        self.capabilities: set[str] = set()
        self.sasl_mechanisms: tuple[str, ...] = ()
        self.raw_capabilities: list[str] = []
        self.capa_supported = False
        self._client: _POP3 | None = None

    async def __aenter__(self) -> POP3Connection:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # A block that failed rolls its deletions back (RSET) before QUIT.
        await self.close(commit=exc_type is None)

    # --- hooks ------------------------------------------------------------------

    def _live_socket(self) -> socket.socket | None:
        return self._client.sock if self._client is not None else self._socket

    def _client_file(self) -> IO[bytes] | None:
        return self._client.file if self._client is not None else None

    def _drop_client(self) -> None:
        self._client = None

    def _translate_library(self, exc: Exception, stage: str) -> tuple[TargetError, bool] | None:
        ep = self.endpoint
        if isinstance(exc, ServerRefusal):
            text = response_text(exc)
            error = TargetError(
                f"{ep.address} refused {stage.upper()}: {quote_foreign(text)}",
                target=ep.target_name,
                hint="the message number may be gone: numbers change between sessions; use uidl()"
                if stage in ("retr", "top", "dele")
                else None,
            )
            if response_code(text.removeprefix("-ERR").strip()) in POP3_TRANSIENT_CODES:
                error.transient = True
            return error, False
        if isinstance(exc, ProtocolFailure | poplib.error_proto):
            return disconnected(ep, POP3, stage, response_text(exc)), True
        if isinstance(exc, ValueError) and not isinstance(exc, OSError):
            return TargetConnectError(
                f"{ep.address} answered {stage.upper()} with something that is not POP3: "
                f"{quote_foreign(str(exc))}",
                target=ep.target_name,
            ), True
        return None

    # --- opening ----------------------------------------------------------------

    def _open_blocking(self, login: Login | None) -> None:
        ep = self.endpoint
        sock = self._connect_socket()
        with self._stage("connect"):
            self._client = _POP3(sock, ep.host, ep.port)
        client = self._client
        self.greeting = quote_foreign(response_text(client.welcome))
        self._capa(client)
        if ep.security is Security.STARTTLS:
            self._starttls(client)
        client.sock.settimeout(ep.command_timeout)
        if login is not None:
            self._login(client, login)

    def _capa(self, client: _POP3) -> None:
        with self._stage("capability"):
            try:
                lines = client.multiline("CAPA")
            except ServerRefusal:
                lines = []  # a server from before RFC 2449: no CAPA, USER and PASS only
            else:
                self.capa_supported = True
        starttls = {"STLS"} & self.capabilities
        raw = [line.decode("utf-8", "replace").strip() for line in lines if line.strip()]
        self.raw_capabilities = raw
        self.capabilities = {line.split()[0].upper() for line in raw} | starttls
        sasl = next((line.split()[1:] for line in raw if line.upper().startswith("SASL")), [])
        self.sasl_mechanisms = tuple(m.upper() for m in sasl)

    def _starttls(self, client: _POP3) -> None:
        ep = self.endpoint
        if "STLS" not in self.capabilities:
            raise self._failed(no_starttls_error(ep, POP3), "starttls")
        with self._stage("starttls"):
            client.start_tls(ep.ssl_context)
        self.tls = tls_state(client.sock, ep.ssl_context)
        self._capa(client)  # the list may change under TLS (USER, SASL PLAIN)

    def _login(self, client: _POP3, login: Login) -> None:
        self._authenticate(
            login,
            lambda mechanism: _send_credentials(client, login, mechanism, self.endpoint),
            seen=_strip_err,
        )

    def _relogin_blocking(self, login: Login) -> None:
        self._login(self._require(), login)

    def _choose_mechanism(self, login: Login) -> str:
        ep = self.endpoint
        if login.tokens is not None:
            return self._choose_bearer_mechanism(login)
        if "PLAIN" in self.sasl_mechanisms:
            return "SASL PLAIN"
        if "USER" in self.capabilities or not self.capa_supported:
            if any(c in text for text in (login.username, login.password.reveal()) for c in "\r\n\0"):
                raise self._failed(
                    TargetAuthError(
                        f"{ep.address} offers only USER/PASS, which cannot carry line breaks",
                        target=ep.target_name,
                        hint="use a password without line breaks",
                    ),
                    "login",
                )
            return "USER"
        if ep.security is Security.NONE and "STLS" in self.capabilities:
            raise self._failed(
                TargetAuthError(
                    f"{ep.address} offers no login before TLS (no USER, no SASL PLAIN); this target is "
                    "set to none, so the password was not sent",
                    target=ep.target_name,
                    hint=login_after_tls_hint(POP3),
                ),
                "login",
            )
        offered = " ".join(self.sasl_mechanisms) or "none"
        raise self._failed(
            TargetAuthError(
                f"{ep.address} offers no login Mailwright can use (SASL: {offered}, no USER); "
                "Mailwright speaks SASL PLAIN and USER/PASS",
                target=ep.target_name,
                hint="use ssl or starttls if the server allows logins only over TLS",
            ),
            "login",
        )

    def _choose_bearer_mechanism(self, login: Login) -> str:
        """SASL OAUTHBEARER or XOAUTH2 (RFC 5034 AUTH), for an OAuth2 key (see transport.sasl)."""
        ep = self.endpoint
        mechanism = choose_bearer_mechanism(self.sasl_mechanisms)
        if mechanism is None:
            offered = " ".join(self.sasl_mechanisms)
            raise self._failed(no_bearer_mechanism(ep, login, f"SASL {offered}" if offered else ""), "login")
        if not carries_credentials(mechanism, login.username, login.password.reveal()):
            raise self._failed(
                TargetAuthError(
                    f"the username or access token of account key {login.key_name!r} holds a control "
                    f"character, which {mechanism} cannot carry",
                    target=ep.target_name,
                    hint="check the key's username",
                ),
                "login",
            )
        return f"SASL {mechanism}"

    def _close_blocking(self, commit: bool) -> None:
        client = self._client
        if client is None:
            return
        client.sock.settimeout(min(5.0, self.endpoint.command_timeout))
        with self._stage("logout"):
            if not commit and self.authenticated_as is not None:
                client.command("RSET")
            client.command("QUIT")  # commits the deletions of this session

    # --- reading and deleting mail --------------------------------------------------

    def _require(self) -> _POP3:
        ep = self.endpoint
        if self._client is None:
            raise not_connected(ep)
        return self._client

    async def stat(self) -> tuple[int, int]:
        """(message count, mailbox size in bytes)."""
        return await self._run(self._stat)

    def _stat(self) -> tuple[int, int]:
        client = self._require()
        with self._stage("stat"):
            reply = client.command("STAT")
            count, size = reply.split()[1:3]
            return int(count), int(size)

    async def uidl(self) -> dict[int, str]:
        """Message number -> unique id, for every message of the mailbox."""
        return await self._run(self._uidl)

    def _uidl(self) -> dict[int, str]:
        client = self._require()
        with self._stage("uidl"):
            lines = client.multiline("UIDL")
            out: dict[int, str] = {}
            for line in lines:
                number, unique = line.split(maxsplit=1)
                out[int(number)] = unique.decode("ascii", "replace").strip()
            return out

    async def retrieve(self, number: int) -> bytes:
        """The whole message (CRLF line ends)."""
        return await self._run(self._lines, "retr", f"RETR {_number(number)}")

    async def top(self, number: int, lines: int) -> bytes:
        """The header and the first `lines` lines of the body."""
        if lines < 0:
            raise ValidationError("the number of body lines cannot be negative", field="lines")
        return await self._run(self._lines, "top", f"TOP {_number(number)} {lines}")

    def _lines(self, stage: str, command: str) -> bytes:
        client = self._require()
        with self._stage(stage):
            lines = client.multiline(command)
        return b"".join(line + b"\r\n" for line in lines)

    async def delete(self, number: int) -> None:
        """Mark a message deleted; the server removes it at QUIT (`close()`)."""
        await self._run(self._simple, "dele", f"DELE {_number(number)}")

    async def reset(self) -> None:
        """Unmark every message marked deleted in this session (RSET)."""
        await self._run(self._simple, "rset", "RSET")

    def _simple(self, stage: str, command: str) -> None:
        client = self._require()
        with self._stage(stage):
            client.command(command)


def _send_credentials(
    client: _POP3, login: Login, mechanism: str, endpoint: POP3Endpoint
) -> CredentialsOutcome:
    """Log in; the only frame that holds the revealed password. Never raises."""
    error_json = b""
    try:
        if login.tokens is not None:
            name = mechanism.removeprefix("SASL ")
            # No initial response on the AUTH line: RFC 5034 limits that line to 255 octets.
            reply = client.command(f"AUTH {name}")
            if not _is_continuation(reply):
                return CredentialsOutcome("refused", response_text(reply))
            message = initial_response(
                name,
                username=login.username,
                token=login.password.reveal(),
                host=endpoint.host,
                port=endpoint.port,
            )
            reply = client.secret_command(base64.b64encode(message))
            if _is_continuation(reply):
                # An error challenge (RFC 7628 3.2.2): base64 JSON; the dummy answer brings the -ERR.
                error_json = _decode_challenge(reply[2:])
                reply = client.secret_command(base64.b64encode(dummy_response(name)))
        elif mechanism == "SASL PLAIN":
            token = f"\0{login.username}\0{login.password.reveal()}".encode()
            challenge = client.command("AUTH PLAIN")
            if not challenge.startswith(b"+ ") and challenge != b"+":
                return CredentialsOutcome("refused", response_text(challenge))
            reply = client.secret_command(base64.b64encode(token))
        else:
            client.command(f"USER {login.username}")
            reply = client.secret_command(b"PASS " + login.password.reveal().encode("utf-8"))
        if not reply.startswith(b"+OK"):
            return CredentialsOutcome("refused", response_text(reply))
    except ServerRefusal as exc:
        return CredentialsOutcome("refused", response_text(exc), challenge=error_json)
    except TimeoutError:
        return CredentialsOutcome("timeout")
    except (OSError, ProtocolFailure) as exc:
        return CredentialsOutcome("lost", response_text(exc) if isinstance(exc, ProtocolFailure) else "")
    return CredentialsOutcome("ok")


def _is_continuation(reply: bytes) -> bool:
    return reply == b"+" or reply.startswith(b"+ ")


def _decode_challenge(data: bytes) -> bytes:
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b""


def _strip_err(outcome: CredentialsOutcome) -> CredentialsOutcome:
    # "-ERR [AUTH] Authentication failed." -> "[AUTH] Authentication failed."
    return CredentialsOutcome(
        outcome.kind, re.sub(r"^-ERR\s*", "", outcome.text), challenge=outcome.challenge
    )


def _number(number: int) -> int:
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValidationError("POP3 message numbers start at 1", field="number")
    return number


def pop3_capabilities(connection: POP3Connection) -> dict[str, Any]:
    caps = connection.capabilities
    return {
        "uidl": "UIDL" in caps,
        "top": "TOP" in caps,
        "stls": "STLS" in caps,
        "user": "USER" in caps,
        "sasl": list(connection.sasl_mechanisms),
        "raw": list(connection.raw_capabilities),
    }


async def connection_report(endpoint: POP3Endpoint, login: Login | None) -> dict[str, Any]:
    """Connect, TLS, CAPA, login, QUIT; the report `targets test` shows.

    Same shape as the SMTP connection test: ok, steps [{name, ok, ms}], greeting,
    capabilities (uidl, top, stls, user, sasl, raw), tls, authenticated_as, warnings,
    error (with its hint) and total_ms.
    """
    connection = POP3Connection(endpoint)
    error, total = await connection.run_probe(login)
    warnings = connection.common_warnings(login)
    if connection.greeting and connection.capa_supported:
        if "UIDL" not in connection.capabilities:
            warnings.append(
                "the server offers no UIDL: messages cannot be told apart between sessions, so a "
                "trigger may read a message twice"
            )
        if "TOP" not in connection.capabilities:
            warnings.append("the server offers no TOP: reading headers only downloads whole messages")
    elif connection.greeting:
        warnings.append("the server does not answer CAPA (RFC 2449): its capabilities are unknown")
    return connection.report(
        login=login,
        error=error,
        capabilities=pop3_capabilities(connection),
        warnings=warnings,
        total_ms=total,
    )


__all__ = ["POP3Connection", "POP3Endpoint", "connection_report"]
