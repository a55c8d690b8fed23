"""The IMAP client: the only code that opens IMAP sockets.

Built on the standard library's `imaplib`, run in worker threads by the session it
shares with POP3 (`transport.session.MailSession`: connecting, timing, TLS and the
translation of failures). Mailwright opens the socket and does the implicit-TLS
handshake itself, so connecting, TLS and the greeting are timed and explained apart.
This module adds what is IMAP's own: choosing a login mechanism (OAUTHBEARER or XOAUTH2
for an OAuth2 key, see `transport.sasl`), CAPABILITY, and the commands that read and
change mail.

Credentials are sent with no audit event and no entry in imaplib's command log.
"""

from __future__ import annotations

import imaplib
import io
import re
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from mailwright.domain.smtp import Security
from mailwright.errors import TargetAuthError, TargetError, ValidationError
from mailwright.secrets import redact
from mailwright.transport.base import Login, ProtocolInfo
from mailwright.transport.imap.arguments import flag_list, quote_mailbox, quote_string, uid_set
from mailwright.transport.imap.responses import (
    Folder,
    parse_fetch_bodies,
    parse_fetch_flags,
    parse_list,
    parse_search,
)
from mailwright.transport.replies import quote_foreign, response_code, response_text
from mailwright.transport.sasl import (
    carries_credentials,
    choose_bearer_mechanism,
    dummy_response,
    initial_response,
    no_bearer_mechanism,
)
from mailwright.transport.session import (
    IMAP_TRANSIENT_CODES,
    CredentialsOutcome,
    MailEndpoint,
    MailSession,
    login_after_tls_hint,
    no_starttls_error,
)
from mailwright.transport.tls import tls_state
from mailwright.transport.translate import disconnected, not_connected

T = TypeVar("T")

IMAP = ProtocolInfo(name="IMAP", ssl_port=993, starttls_port=143, starttls_command="STARTTLS")

# Tried in this order. AUTHENTICATE PLAIN carries UTF-8 credentials in base64; the
# LOGIN command only ASCII, and never when the server announces LOGINDISABLED.
# An OAuth2 key uses AUTHENTICATE OAUTHBEARER or XOAUTH2 instead (transport.sasl).
_MECHANISMS: tuple[str, ...] = ("AUTHENTICATE PLAIN", "LOGIN")

# At most this many UIDs per command, so command lines stay short on any server.
_UID_CHUNK = 500

_STEP_ORDER = ("token", "connect", "tls", "starttls", "login", "capability", "logout")


@dataclass(frozen=True, slots=True)
class IMAPEndpoint(MailEndpoint):
    """An IMAP server: 993 with ssl, 143 with starttls."""


class _IMAP4(imaplib.IMAP4):
    """imaplib on a socket Mailwright opened (and, for implicit TLS, wrapped) itself."""

    def __init__(self, sock: socket.socket, host: str, port: int) -> None:
        self._premade = sock
        self.sensitive = False
        super().__init__(host, port)  # reads the greeting and asks for CAPABILITY

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return self._premade

    def send(self, data: Any) -> None:
        if self.sensitive:
            self.sock.sendall(data)  # no audit event: the line carries a credential
        else:
            super().send(data)

    def _log(self, line: str) -> None:
        # imaplib keeps the last ten command lines in memory (a LOGIN line with the
        # password among them) for debug output Mailwright never turns on: keep none.
        return


class IMAPConnection(MailSession[IMAPEndpoint]):
    """One IMAP session: open (connect, TLS, CAPABILITY, login), read and change mail, close.

    Use as `async with IMAPConnection(endpoint) as imap: await imap.open(login)`.
    UIDs are those of the folder chosen with `select()`.
    """

    protocol = IMAP
    step_order = _STEP_ORDER
    library_errors = (OSError, imaplib.IMAP4.error)

    def __init__(self, endpoint: IMAPEndpoint) -> None:
        super().__init__(endpoint)
        self.capabilities: set[str] = set()
        self.auth_capabilities: set[str] = set()  # as announced before the login
        self.selected: str | None = None
        self.uidnext: int | None = None  # of the selected folder, when the server said
        self._client: _IMAP4 | None = None

    async def __aenter__(self) -> IMAPConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- hooks ------------------------------------------------------------------

    def _live_socket(self) -> socket.socket | None:
        return self._client.sock if self._client is not None else self._socket

    def _client_file(self) -> IO[bytes] | None:
        file = self._client.file if self._client is not None else None
        return file if isinstance(file, io.BufferedIOBase) else None

    def _drop_client(self) -> None:
        self._client = None
        self.selected = None

    def _translate_library(self, exc: Exception, stage: str) -> tuple[TargetError, bool] | None:
        ep = self.endpoint
        if isinstance(exc, imaplib.IMAP4.readonly):
            return TargetError(
                f"{ep.address}: the folder {self.selected!r} became read-only ({response_text(exc)})",
                target=ep.target_name,
                hint="another client may hold it; select it again later",
            ), False
        if isinstance(exc, imaplib.IMAP4.abort):
            return disconnected(ep, IMAP, stage, response_text(exc)), True
        if isinstance(exc, imaplib.IMAP4.error):
            return TargetError(
                f"{ep.address} answered {stage} with an error: {quote_foreign(response_text(exc))}",
                target=ep.target_name,
            ), False
        return None

    # --- opening ----------------------------------------------------------------

    def _open_blocking(self, login: Login | None) -> None:
        ep = self.endpoint
        sock = self._connect_socket()
        with self._stage("connect"):
            self._client = _IMAP4(sock, ep.host, ep.port)
        client = self._client
        self.greeting = quote_foreign(response_text(client.welcome))
        self.capabilities = set(client.capabilities)
        if ep.security is Security.STARTTLS:
            self._starttls(client)
        client.sock.settimeout(ep.command_timeout)
        if login is not None:
            self._login(client, login)

    def _relogin_blocking(self, login: Login) -> None:
        self._login(self._require(), login)

    def _starttls(self, client: _IMAP4) -> None:
        ep = self.endpoint
        if "STARTTLS" not in self.capabilities:
            raise self._failed(no_starttls_error(ep, IMAP), "starttls")
        with self._stage("starttls"):
            client.starttls(ep.ssl_context)  # wraps the socket, then asks for CAPABILITY again
        self.tls = tls_state(client.sock, ep.ssl_context)
        # After TLS the server no longer lists STARTTLS; the report should still say it was offered.
        self.capabilities = {*client.capabilities, "STARTTLS"}

    def _login(self, client: _IMAP4, login: Login) -> None:
        self.auth_capabilities = set(self.capabilities)
        client.untagged_responses.pop("CAPABILITY", None)
        self._authenticate(
            login, lambda mechanism: _send_credentials(client, login, mechanism, self.endpoint)
        )
        with self._stage("capability"):
            # Servers list more after the login (MOVE, UIDPLUS…), most in the login's reply.
            announced = client.untagged_responses.pop("CAPABILITY", None)
            if not announced:
                _typ, announced = client.capability()
        latest = announced[-1] if announced else b""
        if isinstance(latest, bytes) and latest:
            starttls = {"STARTTLS"} & self.capabilities
            self.capabilities = set(latest.decode("ascii", "replace").upper().split()) | starttls

    def _choose_mechanism(self, login: Login) -> str:
        ep = self.endpoint
        caps = self.capabilities
        if login.tokens is not None:
            return self._choose_bearer_mechanism(login)
        for mechanism in _MECHANISMS:
            if mechanism == "AUTHENTICATE PLAIN" and "AUTH=PLAIN" in caps:
                return mechanism
            if mechanism == "LOGIN" and "LOGINDISABLED" not in caps:
                if not _login_command_can_carry(login):
                    raise self._failed(
                        TargetAuthError(
                            f"{ep.address} offers only the LOGIN command, which cannot carry this "
                            f"account key's username or password (non-ASCII characters or line breaks)",
                            target=ep.target_name,
                            hint="use an ASCII password, or a server that offers AUTHENTICATE PLAIN",
                        ),
                        "login",
                    )
                return mechanism
        raise self._failed(self._no_login_error(), "login")

    def _choose_bearer_mechanism(self, login: Login) -> str:
        """AUTHENTICATE OAUTHBEARER or XOAUTH2, for an OAuth2 key (see transport.sasl)."""
        ep = self.endpoint
        offered = sorted(c for c in self.capabilities if c.startswith("AUTH=") or c == "LOGINDISABLED")
        mechanism = choose_bearer_mechanism(c[5:] for c in offered if c.startswith("AUTH="))
        if mechanism is None:
            raise self._failed(no_bearer_mechanism(ep, login, " ".join(offered)), "login")
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
        return f"AUTHENTICATE {mechanism}"

    def _no_login_error(self) -> TargetAuthError:
        ep = self.endpoint
        caps = self.capabilities
        if "LOGINDISABLED" in caps and ep.security is Security.NONE and "STARTTLS" in caps:
            return TargetAuthError(
                f"{ep.address} refuses logins before TLS (LOGINDISABLED); this target is set to none, "
                "so the password was not sent",
                target=ep.target_name,
                hint=login_after_tls_hint(IMAP),
            )
        offered = " ".join(sorted(c for c in caps if c.startswith("AUTH=") or c == "LOGINDISABLED"))
        return TargetAuthError(
            f"{ep.address} offers no login Mailwright can use ({offered or 'nothing'}); Mailwright "
            "speaks AUTHENTICATE PLAIN and LOGIN",
            target=ep.target_name,
            hint="use ssl or starttls if the server allows logins only over TLS",
        )

    def _close_blocking(self, commit: bool) -> None:
        client = self._client
        if client is None:
            return
        client.sock.settimeout(min(5.0, self.endpoint.command_timeout))
        with self._stage("logout"):
            client.logout()

    # --- reading and changing mail --------------------------------------------------

    def _require(self, *, selected: bool = False) -> _IMAP4:
        ep = self.endpoint
        if self._client is None:
            raise not_connected(ep)
        if selected and self.selected is None:
            raise TargetError(
                f"no folder is selected on {ep.address}", target=ep.target_name, hint="call select() first"
            )
        return self._client

    def _expect_ok(self, stage: str, what: str, typ: str, data: list[Any]) -> list[Any]:
        if typ == "OK":
            return data
        ep = self.endpoint
        text = response_text(data)
        code = response_code(text)
        hint = None
        if code == "TRYCREATE":
            hint = "the folder does not exist: create it first"
        elif code == "NONEXISTENT" or "doesn't exist" in text or "does not exist" in text:
            hint = "check the folder name; list_folders() shows the existing ones"
        error = TargetError(
            f"{ep.address} refused {what}: {typ} {quote_foreign(text)}", target=ep.target_name, hint=hint
        )
        if code in IMAP_TRANSIENT_CODES:
            error.transient = True
        raise self._failed(error, stage)

    async def select(self, folder: str = "INBOX", *, readonly: bool = False) -> tuple[int, int]:
        """Open a folder (EXAMINE when read-only); returns (UIDVALIDITY, message count)."""
        return await self._run(self._select, folder, readonly)

    def _select(self, folder: str, readonly: bool) -> tuple[int, int]:
        client = self._require()
        quoted = quote_mailbox(folder)
        self.selected = None
        with self._stage("select"):
            typ, data = client.select(quoted, readonly=readonly)
        self._expect_ok("select", f"to open the folder {folder!r}", typ, list(data))
        self.selected = folder
        _code, validity = client.response("UIDVALIDITY")
        _code, following = client.response("UIDNEXT")
        self.uidnext = _first_int(following) or None
        return _first_int(validity), _first_int(data)

    async def idle(self, *, timeout: float) -> bool:
        """Wait in IDLE (RFC 2177) for a change to the selected folder, at most `timeout` seconds.

        True when the server reported one (EXISTS, EXPUNGE, FETCH, RECENT). The caller
        re-IDLEs after a timeout, well within the 29 minutes servers allow.
        """
        if "IDLE" not in self.capabilities:
            raise TargetError(
                f"{self.endpoint.address} does not offer IDLE", target=self.endpoint.target_name
            )
        return await self._run(self._idle, timeout)

    def _idle(self, timeout: float) -> bool:
        client = self._require(selected=True)
        with self._stage("idle"):
            tag = client._new_tag()  # registers the tag, so that its tagged reply is awaited
            client.send(tag + b" IDLE\r\n")
            first = client._get_line()
            if not first.startswith(b"+"):
                self._expect_ok("idle", "IDLE", "NO", [first])
            changed = _wait_for_change(client, deadline=time.monotonic() + timeout)
            client.send(b"DONE\r\n")
            typ, data = client._command_complete("IDLE", tag)
        self._expect_ok("idle", "IDLE", typ, list(data))
        return changed

    async def search_uids(self, criteria: str = "ALL") -> list[int]:
        """UID SEARCH with IMAP search criteria (ASCII), e.g. 'UNSEEN FROM "alerts@example.org"'."""
        return await self._run(self._search, criteria)

    def _search(self, criteria: str) -> list[int]:
        if not criteria.strip() or not criteria.isascii() or any(c in criteria for c in "\r\n\0"):
            raise ValidationError(
                f"invalid IMAP search criteria {criteria!r}",
                field="criteria",
                hint="use ASCII criteria on one line, e.g. UNSEEN SINCE 1-Jan-2024",
            )
        client = self._require(selected=True)
        with self._stage("search"):
            typ, data = client.uid("SEARCH", criteria)
        return parse_search(self._expect_ok("search", f"SEARCH {criteria}", typ, data))

    async def fetch_rfc822(self, uids: Iterable[int]) -> dict[int, bytes]:
        """The raw messages (BODY.PEEK[]: reading does not mark them \\Seen); missing UIDs are left out."""
        return await self._run(self._fetch, list(uids), "(BODY.PEEK[])", parse_fetch_bodies)

    async def fetch_flags(self, uids: Iterable[int]) -> dict[int, set[str]]:
        """The flags of messages, e.g. {7: {"\\Seen"}}."""
        return await self._run(self._fetch, list(uids), "(FLAGS)", parse_fetch_flags)

    def _fetch(self, uids: list[int], items: str, parse: Callable[[list[Any]], dict[int, T]]) -> dict[int, T]:
        client = self._require(selected=True)
        out: dict[int, T] = {}
        for chunk in _chunks(uids):
            with self._stage("fetch"):
                typ, data = client.uid("FETCH", uid_set(chunk), items)
            out.update(parse(self._expect_ok("fetch", f"FETCH {items}", typ, data)))
        return out

    async def add_flags(self, uids: Iterable[int], flags: Iterable[str]) -> None:
        """Set flags, e.g. add_flags([7], ["\\Seen"]) marks message 7 as read."""
        await self._run(self._store, list(uids), "+FLAGS.SILENT", flag_list(flags))

    async def remove_flags(self, uids: Iterable[int], flags: Iterable[str]) -> None:
        await self._run(self._store, list(uids), "-FLAGS.SILENT", flag_list(flags))

    def _store(self, uids: list[int], command: str, flags: str) -> None:
        client = self._require(selected=True)
        if flags == "()":
            return
        for chunk in _chunks(uids):
            with self._stage("store"):
                typ, data = client.uid("STORE", uid_set(chunk), command, flags)
            self._expect_ok("store", f"STORE {command} {flags}", typ, data)

    async def move(self, uids: Iterable[int], folder: str) -> None:
        """Move messages to another folder: MOVE when offered, else COPY, \\Deleted and expunge.

        Without UIDPLUS the fallback expunges with EXPUNGE, which also removes any other
        message of the folder that was already marked \\Deleted.
        """
        await self._run(self._move, list(uids), folder)

    def _move(self, uids: list[int], folder: str) -> None:
        client = self._require(selected=True)
        quoted = quote_mailbox(folder)
        for chunk in _chunks(uids):
            if "MOVE" in self.capabilities:
                with self._stage("move"):
                    typ, data = client.uid("MOVE", uid_set(chunk), quoted)
                self._expect_ok("move", f"to move messages to {folder!r}", typ, data)
                continue
            with self._stage("copy"):
                typ, data = client.uid("COPY", uid_set(chunk), quoted)
            self._expect_ok("copy", f"to copy messages to {folder!r}", typ, data)
            self._store(chunk, "+FLAGS.SILENT", "(\\Deleted)")
            self._expunge(client, chunk)

    async def delete(self, uids: Iterable[int]) -> None:
        """Delete messages for good: \\Deleted, then UID EXPUNGE (EXPUNGE without UIDPLUS)."""
        await self._run(self._delete, list(uids))

    def _delete(self, uids: list[int]) -> None:
        client = self._require(selected=True)
        for chunk in _chunks(uids):
            self._store(chunk, "+FLAGS.SILENT", "(\\Deleted)")
            self._expunge(client, chunk)

    def _expunge(self, client: _IMAP4, uids: list[int]) -> None:
        with self._stage("expunge"):
            if "UIDPLUS" in self.capabilities:
                typ, data = client.uid("EXPUNGE", uid_set(uids))
            else:
                typ, data = client.expunge()
        self._expect_ok("expunge", "EXPUNGE", typ, data)

    async def create_folder(self, name: str) -> bool:
        """Create a folder; False when it already exists."""
        return await self._run(self._create, name)

    def _create(self, name: str) -> bool:
        client = self._require()
        with self._stage("create"):
            typ, data = client.create(quote_mailbox(name))
        if typ != "OK" and response_code(response_text(data)) == "ALREADYEXISTS":
            return False
        self._expect_ok("create", f"to create the folder {name!r}", typ, data)
        return True

    async def list_folders(self) -> list[Folder]:
        """Every folder of the account (LIST "" *), names decoded from modified UTF-7."""
        return await self._run(self._list)

    def _list(self) -> list[Folder]:
        client = self._require()
        with self._stage("list"):
            typ, data = client.list('""', "*")
        return parse_list(self._expect_ok("list", "LIST", typ, list(data)))


def _send_credentials(
    client: _IMAP4, login: Login, mechanism: str, endpoint: IMAPEndpoint
) -> CredentialsOutcome:
    """Log in; the only frame that holds the revealed password. Never raises."""
    client.sensitive = True
    challenges: list[bytes] = []
    try:
        if login.tokens is not None:
            name = mechanism.removeprefix("AUTHENTICATE ")
            first = initial_response(
                name,
                username=login.username,
                token=login.password.reveal(),
                host=endpoint.host,
                port=endpoint.port,
            )

            def answer(challenge: bytes) -> bytes:
                # The first (empty) challenge gets the token; an error challenge (JSON) the dummy.
                challenges.append(challenge)
                return first if len(challenges) == 1 else dummy_response(name)

            client.authenticate(name, answer)
        elif mechanism == "AUTHENTICATE PLAIN":
            token = f"\0{login.username}\0{login.password.reveal()}".encode()
            client.authenticate("PLAIN", lambda _challenge: token)
        else:
            client.login(quote_string(login.username), login.password.reveal())
    except imaplib.IMAP4.abort as exc:
        return CredentialsOutcome("lost", response_text(exc))
    except imaplib.IMAP4.error as exc:
        return CredentialsOutcome("refused", response_text(exc), challenge=b"".join(challenges[1:2]))
    except TimeoutError:
        return CredentialsOutcome("timeout")
    except OSError as exc:
        return CredentialsOutcome("lost", redact(exc.strerror or type(exc).__name__))
    finally:
        client.sensitive = False
    return CredentialsOutcome("ok")


def _login_command_can_carry(login: Login) -> bool:
    password = login.password.reveal()
    return all(text.isascii() and not any(c in text for c in "\r\n\0") for text in (login.username, password))


def _chunks(uids: list[int]) -> Iterator[list[int]]:
    ordered = sorted(set(uids))
    for start in range(0, len(ordered), _UID_CHUNK):
        yield ordered[start : start + _UID_CHUNK]


_CHANGE_RE = re.compile(rb"^\* (?:\d+ (?:EXISTS|EXPUNGE|RECENT|FETCH)\b|BYE\b)", re.IGNORECASE)


def _readable(client: imaplib.IMAP4, wait: float) -> bool:
    """Whether a line can be read without blocking: data in imaplib's buffer, TLS's, or the socket's."""
    sock = client.sock
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    previous = sock.gettimeout()
    sock.setblocking(False)
    try:
        buffered = client.file.peek(1)  # type: ignore[union-attr]
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        buffered = b""
    finally:
        sock.settimeout(previous)
    if buffered:
        return True
    ready, _, _ = select.select([sock], [], [], wait)
    return bool(ready)


def _wait_for_change(client: imaplib.IMAP4, *, deadline: float) -> bool:
    """Read untagged lines during IDLE until a change is reported or the deadline passes."""
    while (remaining := deadline - time.monotonic()) > 0:
        if not _readable(client, min(remaining, 1.0)):
            continue
        line = client._get_line()
        if _CHANGE_RE.match(line):
            return True
    return False


def _first_int(data: Any) -> int:
    for item in data or []:
        if isinstance(item, bytes) and item.strip().isdigit():
            return int(item)
    return 0


__all__ = ["IMAP", "IMAPConnection", "IMAPEndpoint"]
