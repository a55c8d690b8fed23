"""The IMAP client: the only code that opens IMAP sockets.

Built on the standard library's `imaplib`, run in worker threads (`asyncio.to_thread`),
one command at a time per connection. Mailwright opens the socket and does the
implicit-TLS handshake itself, so connecting, TLS and the greeting are timed and
explained apart, and every library, `ssl` and socket exception is translated here into
the Mailwright error tree, with a diagnosis of the common misconfigurations (wrong TLS
mode for the port, untrusted certificates, login only after STARTTLS, login refused).

The second half of this module (`MailEndpoint`, `MailSession` and the helpers after
it) is shared with `transport.pop3`: both protocols connect, negotiate TLS, fail and
report in the same way.

Credentials never leave the worker thread's innermost frame: they are sent with no
audit event and no entry in imaplib's command log, a refused login is raised with no
exception chain, and every server text that reaches an error goes through the secret
redactor.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import imaplib
import io
import re
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import IO, Any, ClassVar, Generic, Literal, ParamSpec, TypeVar

from mailwright.domain.smtp import Security
from mailwright.errors import (
    CertificateUntrustedError,
    TargetAuthError,
    TargetConnectError,
    TargetError,
    TargetTimeoutError,
    TargetTLSError,
    ValidationError,
)
from mailwright.secrets import redact
from mailwright.transport.outbound import open_socket_blocking
from mailwright.transport.replies import NO_MASK, ReplyMask, quote_foreign
from mailwright.transport.smtp import Login, TLSState
from mailwright.transport.tls import (
    CertificateInfo,
    build_ssl_context,
    certificate_info,
    clear_text_login_warning,
    describe_verification_failure,
    is_plaintext_answer,
    probe_implicit_tls,
)

P = ParamSpec("P")
T = TypeVar("T")

# Tried in this order. AUTHENTICATE PLAIN carries UTF-8 credentials in base64; the
# LOGIN command only ASCII, and never when the server announces LOGINDISABLED.
_MECHANISMS: tuple[str, ...] = ("AUTHENTICATE PLAIN", "LOGIN")

# At most this many UIDs per command, so command lines stay short on any server.
_UID_CHUNK = 500

# Response codes (RFC 5530) that mean "try again later".
_TRANSIENT_CODES = {"UNAVAILABLE", "INUSE", "SERVERBUG", "LIMIT"}

_STEP_ORDER = ("connect", "tls", "starttls", "login", "capability", "logout")


# --- modified UTF-7 (RFC 3501 section 5.1.3) -------------------------------------


def encode_mailbox_name(name: str) -> str:
    """A folder name in IMAP's modified UTF-7: printable ASCII as is, "&" as "&-",
    everything else as "&" + base64 of UTF-16BE (with "," for "/") + "-".

    Raises ValueError for text that has no UTF-16 form (lone surrogates).
    """
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            utf16 = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(utf16).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode_mailbox_name(raw: str) -> str:
    """The text of a folder name in modified UTF-7; ValueError if it is malformed."""
    out: list[str] = []
    index = 0
    while index < len(raw):
        char = raw[index]
        if char != "&":
            if not 0x20 <= ord(char) <= 0x7E:
                raise ValueError(f"character {char!r} must be encoded in modified UTF-7")
            out.append(char)
            index += 1
            continue
        end = raw.find("-", index + 1)
        if end < 0:
            raise ValueError("an '&' shift is not closed by '-'")
        out.append(_decode_shift(raw[index + 1 : end]) if end > index + 1 else "&")
        index = end + 1
    return "".join(out)


def _decode_shift(chunk: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9+,]+", chunk):
        raise ValueError(f"invalid modified base64 {chunk!r}")
    try:
        data = base64.b64decode(chunk.replace(",", "/") + "=" * (-len(chunk) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid modified base64 {chunk!r}") from exc
    if len(data) % 2:
        raise ValueError(f"modified base64 {chunk!r} is not UTF-16")
    return data.decode("utf-16-be")  # strict: a lone surrogate raises UnicodeDecodeError


def quote_string(text: str) -> str:
    """An IMAP quoted string; CR, LF and NUL cannot be quoted."""
    if any(char in text for char in "\r\n\0"):
        raise ValueError("line breaks and NUL cannot be sent to an IMAP server")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_mailbox(name: str) -> str:
    """A folder name ready for a command: modified UTF-7, quoted."""
    if not name:
        raise ValidationError("the folder name is empty", field="folder")
    try:
        return quote_string(encode_mailbox_name(name))
    except ValueError as exc:
        raise ValidationError(f"invalid folder name {name!r}: {exc}", field="folder") from None


def uid_set(uids: Iterable[int]) -> str:
    """A compact IMAP sequence set of UIDs: [1, 2, 3, 7] -> "1:3,7"."""
    ordered = sorted(set(uids))
    if not ordered or ordered[0] < 1:
        raise ValidationError("UIDs are positive integers", field="uids")
    parts: list[str] = []
    start = previous = ordered[0]
    for uid in [*ordered[1:], 0]:
        if uid == previous + 1:
            previous = uid
            continue
        parts.append(str(start) if start == previous else f"{start}:{previous}")
        start = previous = uid
    return ",".join(parts)


_FLAG_RE = re.compile(r"\\?[!#$&'+\-.0-9:<=>?@A-Z^_`a-z|}~]+")


def flag_list(flags: Iterable[str]) -> str:
    """A parenthesised flag list; system flags (\\Seen) or keywords ($Label, Done)."""
    items = list(dict.fromkeys(flags))
    for flag in items:
        if not _FLAG_RE.fullmatch(flag):
            raise ValidationError(
                f"invalid IMAP flag {flag!r}",
                field="flags",
                hint="use a system flag such as \\Seen or \\Flagged, or a keyword of letters and digits",
            )
    return "(" + " ".join(items) + ")"


# --- parsing responses ------------------------------------------------------------

_UID_RE = re.compile(rb"\bUID (\d+)", re.IGNORECASE)
_FLAGS_RE = re.compile(rb"\bFLAGS \(([^)]*)\)", re.IGNORECASE)
_LIST_RE = re.compile(rb'^\((?P<flags>[^)]*)\) (?P<delimiter>NIL|"(?:[^"\\]|\\.)*") ?(?P<name>.*)$', re.S)
_CODE_RE = re.compile(r"^\[([A-Z-]+)")


@dataclass(frozen=True, slots=True)
class Folder:
    """One folder from LIST: its name (decoded), the name on the server, and attributes."""

    name: str
    raw_name: str
    delimiter: str | None
    flags: tuple[str, ...]

    @property
    def selectable(self) -> bool:
        return not {"\\NOSELECT", "\\NONEXISTENT"} & {f.upper() for f in self.flags}


def parse_fetch_bodies(data: list[Any]) -> dict[int, bytes]:
    """UID -> message bytes from the response data of `UID FETCH … (BODY.PEEK[])`."""
    out: dict[int, bytes] = {}
    for index, item in enumerate(data):
        if not isinstance(item, tuple) or len(item) != 2 or b"BODY[]" not in item[0].upper():
            continue  # unsolicited FETCH (flag changes) and closing parentheses
        match = _UID_RE.search(item[0])
        following = data[index + 1] if index + 1 < len(data) else None
        if match is None and isinstance(following, bytes):
            match = _UID_RE.search(following)  # "BODY[] {n} UID 5)": UID after the literal
        if match is not None:
            out[int(match.group(1))] = bytes(item[1])
    return out


def parse_fetch_flags(data: list[Any]) -> dict[int, set[str]]:
    """UID -> flags from the response data of `UID FETCH … (FLAGS)`."""
    out: dict[int, set[str]] = {}
    for item in data:
        line = item[0] if isinstance(item, tuple) else item
        if not isinstance(line, bytes):
            continue
        uid, flags = _UID_RE.search(line), _FLAGS_RE.search(line)
        if uid is not None and flags is not None:
            out[int(uid.group(1))] = set(flags.group(1).decode("ascii", "replace").split())
    return out


def parse_search(data: list[Any]) -> list[int]:
    """UIDs from the response data of `UID SEARCH` (ignoring a trailing "(MODSEQ n)")."""
    uids: list[int] = []
    for item in data:
        if isinstance(item, bytes):
            uids.extend(int(token) for token in item.split() if token.isdigit())
    return sorted(set(uids))


def parse_list(data: list[Any]) -> list[Folder]:
    """Folders from the response data of `LIST "" *` (names quoted, atoms or literals)."""
    folders: list[Folder] = []
    for item in data:
        if isinstance(item, tuple):
            head, literal = item
            match = _LIST_RE.match(head)
            raw = bytes(literal).decode("utf-8", "replace")
        elif isinstance(item, bytes):
            match = _LIST_RE.match(item)
            raw = _unquote(match.group("name")) if match else ""
        else:
            continue
        if match is None:
            continue
        delimiter = match.group("delimiter")
        try:
            name = decode_mailbox_name(raw)
        except ValueError:
            name = raw  # not modified UTF-7 (some servers send UTF-8): show it as it is
        folders.append(
            Folder(
                name=name,
                raw_name=raw,
                delimiter=None if delimiter == b"NIL" else _unquote(delimiter),
                flags=tuple(match.group("flags").decode("ascii", "replace").split()),
            )
        )
    return folders


def _unquote(value: bytes) -> str:
    text = value.decode("utf-8", "replace").strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def response_text(data: Any) -> str:
    """The human text of a server answer or a library error (bytes, lists, exceptions)."""
    if data is None:
        return ""
    if isinstance(data, BaseException):
        data = data.args[0] if data.args else str(data)
    if isinstance(data, list | tuple):
        data = data[-1] if data else ""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return redact(str(data)).strip()


def response_code(text: str) -> str | None:
    """The bracketed response code at the start of a server text ([AUTHENTICATIONFAILED] …)."""
    match = _CODE_RE.match(text)
    return match.group(1) if match else None


# --- shared with transport.pop3 ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class MailProtocol:
    """What differs between the mail-reading protocols in diagnoses and reports."""

    name: str  # IMAP, POP3
    ssl_port: int  # 993, 995
    starttls_port: int  # 143, 110
    starttls_command: str  # STARTTLS, STLS


IMAP = MailProtocol(name="IMAP", ssl_port=993, starttls_port=143, starttls_command="STARTTLS")


@dataclass(frozen=True, slots=True)
class MailEndpoint:
    """Everything needed to reach one mail server, resolved from a target's settings."""

    target_name: str
    host: str  # ASCII form (A-labels for IDN)
    port: int
    security: Security
    ssl_context: ssl.SSLContext
    connect_timeout: float = 10.0
    command_timeout: float = 60.0

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


E = TypeVar("E", bound=MailEndpoint)


@dataclass(frozen=True, slots=True)
class CredentialsOutcome:
    """What came of sending credentials; built in the worker thread, holds no secret."""

    kind: Literal["ok", "refused", "timeout", "lost"]
    text: str = ""


class MailSession(Generic[E]):
    """A blocking protocol client driven from asyncio: one command at a time, each in a
    worker thread, with per-stage timings and errors translated at the seam.

    A cancelled command shuts the socket down, so its worker thread ends at once; the
    connection is then unusable.
    """

    protocol: ClassVar[MailProtocol]
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

    def _close_blocking(self, commit: bool) -> None:
        raise NotImplementedError

    # --- opening and closing ----------------------------------------------------

    async def open(self, login: Login | None) -> None:
        """Connect, negotiate TLS, log in; misconfigurations come back explained."""
        if self._live_socket() is not None:
            raise TargetError(
                f"already connected to {self.endpoint.address}", target=self.endpoint.target_name
            )
        self.mask = ReplyMask.of(login)
        try:
            await self._run(self._open_blocking, login)
        except CertificateUntrustedError as exc:
            explained = await self._explain_certificate(exc)
            await self.close()
            raise explained from exc
        except TargetTimeoutError as exc:
            explained_silence = await self._explain_silence(exc)
            await self.close()
            if explained_silence is exc:
                raise
            raise explained_silence from exc
        except TargetError:
            await self.close()
            raise

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

    @contextlib.contextmanager
    def _stage(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except TargetError as exc:
            exc.stage = exc.stage or stage
            raise
        except self.library_errors as exc:
            translated = self._translate_library(exc, stage)
            if translated is None:
                translated = translate_os_error(
                    exc, stage=stage, endpoint=self.endpoint, protocol=self.protocol
                )
            error, lost = translated
            if lost:
                self._close_socket()
            error.stage = stage
            raise error from exc
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + ms(started)

    def _failed(self, error: TargetError, stage: str) -> TargetError:
        error.stage = stage
        return error

    # --- explaining failures ----------------------------------------------------

    async def _explain_certificate(self, exc: CertificateUntrustedError) -> TargetError:
        ep = self.endpoint
        certificate = await self._peer_certificate()
        message, hint = describe_verification_failure(ep.host, exc.verify_message, certificate)
        explained = CertificateUntrustedError(
            message, verify_message=exc.verify_message, target=ep.target_name, hint=hint
        )
        explained.stage = exc.stage
        return explained

    async def _peer_certificate(self) -> CertificateInfo | None:
        """The server's certificate, fetched without verification, to explain a failure."""
        ep = self.endpoint
        wait = min(5.0, ep.connect_timeout)
        if ep.security is Security.SSL:
            return await probe_implicit_tls(ep.host, ep.port, wait=wait)
        unverified = build_ssl_context(ca_file=None, verify=False)
        probe = type(self)(replace(ep, ssl_context=unverified, connect_timeout=wait))
        try:
            await probe.open(None)
        except TargetError:
            return None
        finally:
            await probe.close()
        return probe.tls.certificate if probe.tls else None

    async def _explain_silence(self, exc: TargetTimeoutError) -> TargetError:
        """No greeting in time: does the port expect implicit TLS?"""
        ep = self.endpoint
        if exc.stage != "connect" or ep.security is Security.SSL:
            return exc
        if await probe_implicit_tls(ep.host, ep.port, wait=min(3.0, ep.connect_timeout)) is None:
            return exc
        explained = TargetTLSError(
            f"{ep.address} sent no {self.protocol.name} greeting but completed a TLS handshake: "
            f"it expects implicit TLS; this target is set to {ep.security.value}",
            target=ep.target_name,
            hint=f"port {ep.port} expects implicit TLS: choose ssl",
        )
        explained.stage = "connect"
        return explained

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
        ep = self.endpoint
        failed = error.stage if error is not None else None
        tls = None
        if self.tls is not None:
            cert = self.tls.certificate
            tls = {
                "version": self.tls.version,
                "cipher": self.tls.cipher,
                "verified": self.tls.verified,
                "certificate": cert.as_dict() if cert else None,
            }
        return {
            "ok": error is None,
            "target": ep.target_name,
            "server": ep.host,
            "port": ep.port,
            "security": ep.security.value,
            "protocol": self.protocol.name,
            "account_key": login.key_name if login else None,
            "steps": [
                {"name": name, "ok": name != failed, "ms": self.timings[name]}
                for name in self.step_order
                if name in self.timings
            ],
            "greeting": self.greeting,
            "capabilities": capabilities if self.greeting else {},
            "tls": tls,
            "authenticated_as": self.authenticated_as,
            "auth_mechanism": self.auth_mechanism,
            "warnings": warnings,
            "error": error.details() if error is not None else None,
            "total_ms": total_ms,
        }

    def common_warnings(self, login: Login | None) -> list[str]:
        ep = self.endpoint
        out: list[str] = []
        if ep.security is Security.NONE:
            if login is not None:
                out.append(clear_text_login_warning(login.key_name, ssl_port=self.protocol.ssl_port))
            out.append("no TLS: the password and mail cross the network in plain text")
        elif ep.ssl_context.verify_mode == ssl.CERT_NONE:
            out.append(
                "certificate validation is DISABLED for this target: anyone on the network path "
                "can impersonate the server and read the password and mail; give a CA file instead"
            )
        if login is None:
            out.append(
                f"no account key: a {self.protocol.name} server shows a mailbox only after a login, "
                "so reading mail needs one"
            )
        return out

    async def run_probe(self, login: Login | None) -> tuple[TargetError | None, float]:
        """Open and close once, for a report: the error (if any) and the total time in ms."""
        started = time.perf_counter()
        error: TargetError | None = None
        try:
            await self.open(login)
        except TargetError as exc:
            error = exc
        finally:
            await self.close()
        return error, ms(started)


def _shutdown(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            # The plain socket's shutdown, also for TLS sockets: wakes a blocked reader at once.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _finish_abandoned(done: asyncio.Future[Any], finish: Callable[[], None]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved: the caller was cancelled and does not want it
    finish()


def ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def tls_state(sock: socket.socket, context: ssl.SSLContext) -> TLSState | None:
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    cipher = sock.cipher()
    return TLSState(
        version=sock.version(),
        cipher=cipher[0] if cipher else None,
        certificate=certificate_info(der) if der else None,
        verified=context.verify_mode != ssl.CERT_NONE,
    )


def no_starttls_error(endpoint: MailEndpoint, protocol: MailProtocol) -> TargetTLSError:
    ep = endpoint
    if ep.port == protocol.ssl_port:
        hint = f"port {ep.port} expects implicit TLS: choose ssl"
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


def auth_refused(endpoint: MailEndpoint, protocol: MailProtocol, login: Login, text: str) -> TargetError:
    """The error for a login the server refused; transient codes are retried later."""
    ep = endpoint
    text = quote_foreign(ReplyMask.of(login)(text))
    code = response_code(text)
    if code in _TRANSIENT_CODES or code in {"SYS/TEMP", "IN-USE", "LOGIN-DELAY"}:
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
            hint=f"the server allows login only after {protocol.starttls_command}: choose starttls",
        )
    return TargetAuthError(
        f"{ep.address} refused the login of account key {login.key_name!r} (user {login.username}): {text}",
        target=ep.target_name,
        hint=auth_refused_hint(ep.host),
    )


def credentials_failure(
    endpoint: MailEndpoint, protocol: MailProtocol, login: Login, outcome: CredentialsOutcome
) -> TargetError | None:
    """The error for a login that did not succeed, or None if it did."""
    ep = endpoint
    if outcome.kind == "ok":
        return None
    if outcome.kind == "refused":
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


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def translate_os_error(
    exc: BaseException, *, stage: str, endpoint: MailEndpoint, protocol: MailProtocol
) -> tuple[TargetError, bool]:
    """The most specific Mailwright error for a socket or `ssl` failure; the connection is lost."""
    ep = endpoint
    chain = list(_causes(exc))
    cert_error = next((e for e in chain if isinstance(e, ssl.SSLCertVerificationError)), None)
    if cert_error is not None:
        message, hint = describe_verification_failure(ep.host, cert_error.verify_message, None)
        return CertificateUntrustedError(
            message, verify_message=cert_error.verify_message, target=ep.target_name, hint=hint
        ), True
    ssl_error = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if ssl_error is not None:
        return _tls_failure(ep, protocol, stage, ssl_error), True
    if isinstance(exc, TimeoutError):
        return _timeout(ep, protocol, stage), True
    if isinstance(exc, socket.gaierror):
        return TargetConnectError(
            f"cannot resolve the {protocol.name} server name {ep.host!r}: {exc.strerror or exc}",
            target=ep.target_name,
            hint=f"check the spelling of the {protocol.name} server",
        ), True
    if isinstance(exc, ConnectionRefusedError):
        return TargetConnectError(
            f"{ep.address} refused the connection: nothing listens on port {ep.port}",
            target=ep.target_name,
            hint=(
                f"check the {protocol.name} port ({protocol.ssl_port} for ssl, {protocol.starttls_port} "
                "for starttls) and that the server is running"
            ),
        ), True
    if isinstance(exc, OSError) and exc.errno is not None:
        return TargetConnectError(
            f"cannot talk to {ep.address} during {stage}: {exc.strerror or exc}", target=ep.target_name
        ), True
    return disconnected(ep, protocol, stage, str(exc)), True


def disconnected(
    endpoint: MailEndpoint, protocol: MailProtocol, stage: str, detail: str
) -> TargetConnectError:
    ep = endpoint
    hint = None
    if stage == "connect" and ep.security is not Security.SSL and ep.port == protocol.ssl_port:
        hint = f"port {ep.port} expects implicit TLS: choose ssl"
    suffix = f" ({quote_foreign(detail)})" if detail else ""
    return TargetConnectError(
        f"{ep.address} closed the connection during {stage}{suffix}", target=ep.target_name, hint=hint
    )


def _tls_failure(ep: MailEndpoint, protocol: MailProtocol, stage: str, error: ssl.SSLError) -> TargetTLSError:
    reason = error.reason or str(error)
    if ep.security is Security.SSL and is_plaintext_answer(error):
        return TargetTLSError(
            f"TLS handshake with {ep.address} failed: the server answered in plain text ({reason})",
            target=ep.target_name,
            hint=f"port {ep.port} speaks plain {protocol.name} first: choose starttls",
        )
    return TargetTLSError(
        f"TLS handshake with {ep.address} failed during {stage}: {reason}",
        target=ep.target_name,
        hint="check that the server supports TLS 1.2 or newer and that the port and security mode match",
    )


def _timeout(ep: MailEndpoint, protocol: MailProtocol, stage: str) -> TargetTimeoutError:
    if stage == "connect" and ep.security is not Security.SSL:
        hint = (
            f"no greeting within {ep.connect_timeout:g} s; if port {ep.port} expects implicit TLS "
            f"(like {protocol.ssl_port}), choose ssl"
        )
    elif stage in ("connect", "tls"):
        hint = f"raise the connect timeout (now {ep.connect_timeout:g} s) or check the server and port"
    else:
        hint = f"raise the command timeout (now {ep.command_timeout:g} s) or check the server's health"
    return TargetTimeoutError(
        f"{ep.address} did not answer in time during {stage}", target=ep.target_name, hint=hint
    )


# --- IMAP -------------------------------------------------------------------------


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
        ep = self.endpoint
        self.auth_capabilities = set(self.capabilities)
        client.untagged_responses.pop("CAPABILITY", None)
        started = time.perf_counter()
        try:
            mechanism = self._choose_mechanism(login)
            outcome = _send_credentials(client, login, mechanism)
        finally:
            self.timings["login"] = ms(started)
        failure = credentials_failure(ep, IMAP, login, outcome)
        if failure is not None:
            if outcome.kind in ("timeout", "lost"):
                self._close_socket()
            raise self._failed(failure, "login")
        self.authenticated_as = login.username
        self.auth_mechanism = mechanism
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

    def _no_login_error(self) -> TargetAuthError:
        ep = self.endpoint
        caps = self.capabilities
        if "LOGINDISABLED" in caps and ep.security is Security.NONE and "STARTTLS" in caps:
            return TargetAuthError(
                f"{ep.address} refuses logins before TLS (LOGINDISABLED); this target is set to none, "
                "so the password was not sent",
                target=ep.target_name,
                hint="the server allows login only after STARTTLS: choose starttls",
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
            raise TargetConnectError(f"not connected to {ep.address}", target=ep.target_name)
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
        if code in _TRANSIENT_CODES:
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


def _send_credentials(client: _IMAP4, login: Login, mechanism: str) -> CredentialsOutcome:
    """Log in; the only frame that holds the revealed password. Never raises."""
    client.sensitive = True
    try:
        if mechanism == "AUTHENTICATE PLAIN":
            token = f"\0{login.username}\0{login.password.reveal()}".encode()
            client.authenticate("PLAIN", lambda _challenge: token)
        else:
            client.login(quote_string(login.username), login.password.reveal())
    except imaplib.IMAP4.abort as exc:
        return CredentialsOutcome("lost", response_text(exc))
    except imaplib.IMAP4.error as exc:
        return CredentialsOutcome("refused", response_text(exc))
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


def imap_capabilities(connection: IMAPConnection) -> dict[str, Any]:
    caps = connection.capabilities
    auth = connection.auth_capabilities or caps
    return {
        "idle": "IDLE" in caps,
        "uidplus": "UIDPLUS" in caps,
        "move": "MOVE" in caps,
        "condstore": "CONDSTORE" in caps,
        "starttls": "STARTTLS" in caps,
        "auth": sorted(c.removeprefix("AUTH=") for c in auth if c.startswith("AUTH=")),
        "raw": sorted(caps),
    }


async def connection_report(endpoint: IMAPEndpoint, login: Login | None) -> dict[str, Any]:
    """Connect, TLS, CAPABILITY, login, LOGOUT; the report `targets test` shows.

    Same shape as the SMTP connection test: ok, steps [{name, ok, ms}], greeting,
    capabilities (idle, uidplus, move, condstore, starttls, auth, raw), tls,
    authenticated_as, warnings, error (with its hint) and total_ms.
    """
    connection = IMAPConnection(endpoint)
    error, total = await connection.run_probe(login)
    warnings = connection.common_warnings(login)
    caps = connection.capabilities
    if connection.authenticated_as is not None:
        if not {"MOVE", "UIDPLUS"} & caps:
            warnings.append(
                "the server offers neither MOVE nor UIDPLUS: moving or deleting messages expunges "
                "every message of the folder marked \\Deleted"
            )
        if "IDLE" not in caps:
            warnings.append("the server offers no IDLE: mail triggers have to poll")
    return connection.report(
        login=login,
        error=error,
        capabilities=imap_capabilities(connection),
        warnings=warnings,
        total_ms=total,
    )


__all__ = [
    "Folder",
    "IMAPConnection",
    "IMAPEndpoint",
    "connection_report",
    "decode_mailbox_name",
    "encode_mailbox_name",
]
