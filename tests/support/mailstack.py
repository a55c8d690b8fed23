"""A private Postfix + Dovecot pair for end-to-end tests.

``MailStack`` writes its own configuration under a short private directory
(``/tmp/mw-XXXXXXXX``: unix socket paths are limited to 107 bytes and the daemons'
users must be able to enter it), starts Postfix (``postfix -c DIR start``) and Dovecot
(``dovecot -F -c FILE``) on free ports of 127.0.0.2 with a throw-away CA made by
``trustme``, and stops them by PID.  Clients connect from 127.0.0.1, so Dovecot does
not treat them as "secure" and refuses plaintext logins before STARTTLS.

Every message Postfix accepts for one of the stack's domains (``example.test`` first,
then ``example.com/.net/.org``) is handed to Dovecot and stored in
``<dir>/mail/<domain>/<local part>/Maildir``.  Any local part is accepted (Dovecot's
userdb accepts all users); only users created with :meth:`MailStack.add_user` can log
in.  Authenticated clients may send to other domains: such mail is bounced back to the
sender, nothing leaves the machine.

Delivery to Dovecot uses ``dovecot-lda`` through a Postfix ``pipe`` by default
(``delivery="lda"``).  ``delivery="lmtp"`` uses Dovecot's LMTP socket instead, but
Dovecot 2.3's LMTP does not offer SMTPUTF8, so Postfix bounces (5.6.7) any message
submitted with SMTPUTF8 whose addresses or headers are not ASCII.  Neither path can
deliver to a UTF-8 *local part* (Dovecot 2.3 limitation).

With ``oauth2_introspection_url`` set, Dovecot also offers the SASL mechanisms XOAUTH2
and OAUTHBEARER (IMAP, POP3, and SMTP AUTH through Postfix's Dovecot SASL), checked by
its ``oauth2`` passdb, which POSTs each access token to that RFC 7662 introspection
URL (see ``tests/support/dovecot_oauth.py``); passwords then log in with PLAIN and
LOGIN only, tokens with those two only.

Requires root (Postfix and Dovecot drop privileges themselves) and the Debian packages
installed by ``scripts/install-system-deps.sh``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import email.utils
import grp
import imaplib
import os
import pty
import pwd
import re
import select
import shutil
import signal
import socket
import ssl
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import trustme

from tests.support.ports import free_ports

__all__ = ["MailStack", "MailStackError", "make_message", "missing_binaries"]

DEFAULT_HOST = "127.0.0.2"
DEFAULT_DOMAIN = "example.test"
DEFAULT_EXTRA_DOMAINS = ("example.com", "example.net", "example.org")
DEFAULT_MESSAGE_SIZE_LIMIT = 10 * 1024 * 1024
SERVER_IDENTITIES = ("localhost", "mail.test", DEFAULT_HOST)

_SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# ASCII only: Dovecot 2.3 cannot deliver to UTF-8 local parts (dovecot-lda fails
# with "Invalid character in localpart"; LMTP lacks SMTPUTF8).
_LOCAL_PART_RE = re.compile(r"^[a-z0-9!#$%&'*+=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+=?^_`{|}~-]+)*$")
_PORT_NAMES = (
    "smtp_port",
    "submission_port",
    "smtps_port",
    "imap_port",
    "imaps_port",
    "pop3_port",
    "pop3s_port",
)


class MailStackError(RuntimeError):
    """Starting or using the mail stack failed."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + _SBIN_PATH)


def _ascii_lower(text: str) -> str:
    """Lowercase ASCII letters only, like Dovecot's %L modifier."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = env.get("PATH", "") + ":" + _SBIN_PATH
    env.pop("MAIL_CONFIG", None)
    return env


_DOVECOT_LIBEXEC = Path("/usr/lib/dovecot")
# Programs from the Debian packages postfix, dovecot-core, -imapd, -pop3d and -lmtpd.
_REQUIRED_PROGRAMS = ("postfix", "postconf", "dovecot")
_REQUIRED_DOVECOT_PROGRAMS = ("dovecot-lda", "imap", "pop3", "lmtp")


def missing_binaries() -> list[str]:
    """Names of the required Postfix/Dovecot programs that are not installed."""
    missing = [name for name in _REQUIRED_PROGRAMS if _which(name) is None]
    missing += [
        f"{_DOVECOT_LIBEXEC}/{name}"
        for name in _REQUIRED_DOVECOT_PROGRAMS
        if not os.access(_DOVECOT_LIBEXEC / name, os.X_OK)
    ]
    return missing


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"--- {path}: (missing)"
    return f"--- {path} (last {lines} lines):\n" + "\n".join(text.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists"; treat it as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _session_members(sid: int) -> list[int]:
    """PIDs of live processes whose session id is ``sid`` (daemons call setsid())."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields: state ppid pgrp session ...
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def _is_our_master(pid: int) -> bool:
    """True if ``pid`` is a live Postfix/Dovecot master leading its own session."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return os.path.basename(exe) in {"master", "dovecot"} and int(fields[3]) == pid


def _is_zombie_master(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name = stat[stat.find("(") + 1 : stat.rfind(")")]
    return name in {"master", "dovecot"} and stat.rsplit(")", 1)[1].split()[0] == "Z"


def _terminate_sessions(leaders: Sequence[int], grace: float = 2.0) -> set[int]:
    """SIGTERM session leaders (daemon masters stop their children), wait up to
    ``grace`` seconds, then SIGKILL whatever is left in their sessions.

    Postfix's master exits within milliseconds; Dovecot's takes about a second, or
    five when a login process is still waiting for a handshake, hence the SIGKILL.
    """
    members = {p for sid in leaders for p in _session_members(sid)} | set(leaders)
    for pid in leaders:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_pid_alive(p) for p in leaders) and time.monotonic() < deadline:
        time.sleep(0.02)
    members |= {p for sid in leaders for p in _session_members(sid)}
    leftovers = {p for p in members if _pid_alive(p)}
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(_pid_alive(p) for p in leftovers) and time.monotonic() < deadline:
        time.sleep(0.02)
    return members


_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    """Make this process a child subreaper (Linux) for the duration of the block."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        current = ctypes.c_int(0)
        libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(current), 0, 0, 0)
        enabled = not current.value and libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        enabled = False
    try:
        yield
    finally:
        if enabled:
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _reap(pids: set[int], timeout: float = 2.0) -> None:
    """Reap those of ``pids`` that are our (zombie) children; wait briefly for the
    others to disappear (their parent reaps them)."""
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child: gone once /proc says so
                done = 0 if Path(f"/proc/{pid}").exists() else pid
            if done:
                pending.discard(pid)
        if not pending or time.monotonic() > deadline:
            return
        time.sleep(0.01)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _listening(host: str) -> set[int]:
    """TCP ports in LISTEN state on ``host`` (IPv4), from /proc/net/tcp.

    Used instead of probing with connections, which would make the servers log
    spurious disconnects and leave login processes waiting for handshakes.
    """
    want = socket.inet_aton(host)[::-1].hex().upper()  # little-endian hex
    ports: set[int] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            addr, _, port = fields[1].partition(":")
            if fields[3] == "0A" and addr in (want, "00000000"):
                ports.add(int(port, 16))
    return ports


class MailStack:
    """A private Postfix (SMTP) + Dovecot (IMAP/POP3) pair on 127.0.0.2.

    Use as a context manager or call :meth:`start` / :meth:`stop`.  A default user
    (:attr:`user_address` / :attr:`user_password`) exists from the start; add more
    with :meth:`add_user` at any time.  Read delivered mail with
    :meth:`fetch_messages` / :meth:`wait_for_messages` (IMAPS, CRLF line ends) or
    :meth:`maildir_messages` / :meth:`wait_for_maildir` (the files, LF line ends).

    Ports (all on :attr:`host`, all ``0`` until :meth:`start`):

    * ``smtp_port`` – port-25-like, no AUTH, accepts mail for the stack's domains,
      optional STARTTLS;
    * ``submission_port`` – port-587-like, STARTTLS required, AUTH only after STARTTLS;
    * ``smtps_port`` – port-465-like implicit TLS, AUTH required to send;
    * ``imap_port`` / ``pop3_port`` – STARTTLS (plaintext login refused before it);
    * ``imaps_port`` / ``pop3s_port`` – implicit TLS.

    The server certificate is valid for ``localhost``, ``mail.test`` and ``127.0.0.2``
    and signed by the CA in :attr:`ca_cert_path` / :attr:`ca_pem`.

    ``oauth2_introspection_url`` (off by default) adds SASL XOAUTH2 and OAUTHBEARER,
    checked by Dovecot's oauth2 passdb against that RFC 7662 introspection endpoint.
    """

    def __init__(
        self,
        *,
        domain: str = DEFAULT_DOMAIN,
        extra_domains: Sequence[str] = DEFAULT_EXTRA_DOMAINS,
        message_size_limit: int = DEFAULT_MESSAGE_SIZE_LIMIT,
        user_local_part: str = "user",
        user_password: str = "user-password",
        host: str = DEFAULT_HOST,
        keep_files: bool = False,
        delivery: Literal["lda", "lmtp"] = "lda",
        oauth2_introspection_url: str | None = None,
    ) -> None:
        self.host: str = host
        self.oauth2_introspection_url: str | None = oauth2_introspection_url
        self.domain: str = domain.lower()
        self.domains: tuple[str, ...] = (
            self.domain,
            *(d.lower() for d in extra_domains if d.lower() != self.domain),
        )
        self.message_size_limit: int = message_size_limit
        self.keep_files: bool = keep_files
        self.delivery: Literal["lda", "lmtp"] = delivery

        self.smtp_port: int = 0
        self.submission_port: int = 0
        self.smtps_port: int = 0
        self.imap_port: int = 0
        self.imaps_port: int = 0
        self.pop3_port: int = 0
        self.pop3s_port: int = 0

        self._base: Path | None = None
        self._ca_pem: bytes = b""
        self._users: dict[str, str] = {}
        self._postfix_master_pid: int | None = None
        self._dovecot_master_pid: int | None = None
        self._dovecot_proc: subprocess.Popen[bytes] | None = None
        self._started = False
        self._atexit_registered = False
        self._mail_uid: int = 0
        self._mail_gid: int = 0
        self._mail_user: str = "mail"
        self._mail_group: str = "mail"
        self._dovecot_uid: int = 0
        self._dovecot_gid: int = 0

        self.user_password: str = user_password
        self.user_address: str = self.add_user(user_local_part, user_password)

    # ------------------------------------------------------------------ paths

    @property
    def base_dir(self) -> Path:
        """The private directory holding configuration, queues, logs and mail."""
        if self._base is None:
            raise MailStackError("MailStack is not started")
        return self._base

    @property
    def ca_cert_path(self) -> Path:
        """PEM file of the CA that signed the servers' certificate."""
        return self.base_dir / "tls" / "ca.pem"

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate (PEM)."""
        if not self._ca_pem:
            raise MailStackError("MailStack is not started")
        return self._ca_pem

    @property
    def other_ca_path(self) -> Path:
        """PEM file of a second, unrelated CA (for "certificate not trusted" tests)."""
        path = self.base_dir / "tls" / "other-ca.pem"
        if not path.exists():
            trustme.CA(organization_name="Unrelated Test CA").cert_pem.write_to_path(str(path))
        return path

    @property
    def postfix_log_path(self) -> Path:
        """Postfix's ``maillog_file``."""
        return self.base_dir / "postfix" / "postfix.log"

    @property
    def dovecot_log_path(self) -> Path:
        """Dovecot's log (dovecot-lda logs to ``lda.log`` next to it)."""
        return self.base_dir / "dovecot" / "dovecot.log"

    @property
    def mail_root(self) -> Path:
        """Maildirs live in ``mail_root / <domain> / <local part> / "Maildir"``."""
        return self.base_dir / "mail"

    @property
    def started(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._started

    # ------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start Postfix and Dovecot; raises :class:`MailStackError` with log tails."""
        if self._started:
            return
        missing = missing_binaries()
        if missing:
            raise MailStackError(
                f"missing programs: {', '.join(missing)}; run `bash scripts/install-system-deps.sh`"
            )
        if os.geteuid() != 0:
            raise MailStackError("MailStack must run as root (Postfix/Dovecot need it)")
        try:
            mail_pw = pwd.getpwnam("mail")
        except KeyError as exc:
            raise MailStackError("system user 'mail' does not exist") from exc
        self._mail_uid, self._mail_gid = mail_pw.pw_uid, mail_pw.pw_gid
        self._mail_user, self._mail_group = mail_pw.pw_name, grp.getgrgid(mail_pw.pw_gid).gr_name
        try:
            dovecot_pw = pwd.getpwnam("dovecot")
        except KeyError as exc:
            raise MailStackError("system user 'dovecot' does not exist") from exc
        self._dovecot_uid, self._dovecot_gid = dovecot_pw.pw_uid, dovecot_pw.pw_gid

        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
            except MailStackError as exc:
                logs = self._log_tails()
                self.stop()
                if attempt < attempts and "in use" in logs:
                    continue  # lost a race for a port; pick new ones
                raise MailStackError(f"{exc}\n{logs}") from None
            except BaseException:
                self.stop()
                raise
            else:
                self._started = True
                return

    def stop(self) -> None:
        """Stop both servers (killing any leftover process) and remove the directory."""
        base = self._base
        if base is None:
            return
        self._stop_servers(base)
        self._started = False
        if not self.keep_files:
            shutil.rmtree(base, ignore_errors=True)
        self._base = None
        self._ca_pem = b""

    # ---------------------------------------------------------------- users

    def address(self, local_part: str, domain: str | None = None) -> str:
        """``local_part@domain`` (default: the primary domain); creates no user."""
        return f"{local_part}@{domain or self.domain}"

    def add_user(self, local_part: str, password: str, domain: str | None = None) -> str:
        """Create (or change the password of) a mailbox user; returns its address."""
        local = _ascii_lower(local_part)
        dom = (domain or self.domain).lower()
        if not _LOCAL_PART_RE.match(local):
            raise ValueError(f"unsupported local part: {local_part!r}")
        if dom not in self.domains:
            raise ValueError(f"{dom!r} is not one of the stack's domains {self.domains}")
        if any(c in password for c in ":\n\r\0"):
            raise ValueError("password must not contain ':', NUL or line breaks")
        addr = f"{local}@{dom}"
        changed = self._users.get(addr) not in (None, password)
        self._users[addr] = password
        if self._base is not None:
            self._write_passwd_file(addr, password)
            if changed:
                # Dovecot stats a passwd-file at most once per second: make sure the
                # next login sees the new password.
                time.sleep(1.1)
        return addr

    # ------------------------------------------------------------- reading

    def ssl_context(self, cafile: Path | None = None) -> ssl.SSLContext:
        """A client context that trusts only ``cafile`` (default: the stack's CA)."""
        return ssl.create_default_context(cafile=str(cafile or self.ca_cert_path))

    def fetch_messages(self, address: str, password: str) -> list[bytes]:
        """Raw RFC 822 bytes (CRLF line ends) of every INBOX message, via IMAPS."""
        with imaplib.IMAP4_SSL(
            self.host, self.imaps_port, ssl_context=self.ssl_context(), timeout=10
        ) as imap:
            imap.login(address, password)
            typ, data = imap.select("INBOX", readonly=True)
            if typ != "OK":
                raise MailStackError(f"IMAP SELECT INBOX failed: {data!r}")
            typ, data = imap.uid("SEARCH", "ALL")
            if typ != "OK":
                raise MailStackError(f"IMAP SEARCH failed: {data!r}")
            uids = [u for u in (data[0] or b"").split() if u]
            messages: list[bytes] = []
            for uid in uids:
                typ, fetched = imap.uid("FETCH", uid.decode(), "(BODY.PEEK[])")
                if typ != "OK":
                    raise MailStackError(f"IMAP FETCH {uid!r} failed: {fetched!r}")
                messages.extend(part[1] for part in fetched if isinstance(part, tuple))
            imap.close()
            return messages

    def wait_for_messages(
        self, address: str, password: str, count: int, timeout: float = 15.0
    ) -> list[bytes]:
        """Poll IMAP until INBOX holds at least ``count`` messages; returns them all."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.fetch_messages(address, password)
            if len(messages) >= count:
                return messages
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{address}: {len(messages)} message(s) after {timeout}s, "
                    f"expected {count}\n{_tail(self.postfix_log_path, 15)}"
                )
            time.sleep(0.1)

    def maildir_path(self, address: str) -> Path:
        """The Maildir that receives mail for ``address`` (may not exist yet)."""
        local, _, dom = _ascii_lower(address).rpartition("@")
        return self.mail_root / dom / local / "Maildir"

    def maildir_messages(self, address: str) -> list[bytes]:
        """Raw contents of the INBOX Maildir files (LF line ends), oldest first."""
        maildir = self.maildir_path(address)
        files: list[Path] = []
        for sub in ("cur", "new"):
            with contextlib.suppress(FileNotFoundError):
                files.extend(p for p in (maildir / sub).iterdir() if p.is_file())
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_bytes() for p in files]

    def wait_for_maildir(self, address: str, count: int, timeout: float = 15.0) -> list[bytes]:
        """Poll the Maildir until it holds at least ``count`` messages; returns them all."""
        deadline = time.monotonic() + timeout
        while len(messages := self.maildir_messages(address)) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{address}: {len(messages)} message(s) in the Maildir after {timeout}s, "
                    f"expected {count}\n{_tail(self.postfix_log_path, 15)}"
                )
            time.sleep(0.05)
        return messages

    def log_tails(self) -> str:
        """The last lines of the Postfix and Dovecot logs (for assertion messages)."""
        return self._log_tails()

    # ------------------------------------------------------------ internals

    def _start_once(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="mw-", dir="/tmp"))
        base.chmod(0o755)  # daemons drop privileges and must reach their sockets
        self._base = base
        ports = free_ports(len(_PORT_NAMES), self.host)
        for name, port in zip(_PORT_NAMES, ports, strict=True):
            setattr(self, name, port)

        self._make_tls(base)
        for sub in ("postfix", "postfix/etc", "dovecot", "dovecot/state"):
            (base / sub).mkdir(mode=0o755)
        mail = base / "mail"
        mail.mkdir(mode=0o700)
        os.chown(mail, self._mail_uid, self._mail_gid)
        lda_log = base / "dovecot" / "lda.log"
        lda_log.touch(mode=0o644)
        os.chown(lda_log, self._mail_uid, self._mail_gid)

        for addr, password in self._users.items():
            self._write_passwd_file(addr, password)
        self._write_dovecot_conf(base)
        self._write_postfix_conf(base)

        self._start_dovecot(base)
        self._start_postfix(base)
        self._wait_ready(base)

    def _make_tls(self, base: Path) -> None:
        tls = base / "tls"
        tls.mkdir(mode=0o755)
        ca = trustme.CA(organization_name="Mailwright Test CA")
        leaf = ca.issue_cert(*SERVER_IDENTITIES)
        ca.cert_pem.write_to_path(str(tls / "ca.pem"))
        self._ca_pem = ca.cert_pem.bytes()
        key = tls / "server-key.pem"
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        chain = tls / "server-chain.pem"
        for i, blob in enumerate(leaf.cert_chain_pems):
            blob.write_to_path(str(chain), append=i > 0)

    def _write_passwd_file(self, address: str, password: str) -> None:
        """Write one user's passwd-file (``dovecot/passwd/<domain>/<local part>``).

        One file per user because Dovecot re-checks a passwd-file at most once per
        second; a user added later gets a file Dovecot has never opened, so it can
        log in immediately.
        """
        local, _, dom = address.rpartition("@")
        root = self.base_dir / "dovecot" / "passwd"
        directory = root / dom
        for path in (root, directory):
            if not path.exists():
                path.mkdir(mode=0o750)
                os.chown(path, self._dovecot_uid, self._dovecot_gid)
        target = directory / local
        tmp = directory / f".{local}.tmp"
        # `nodelay`: answer failed logins at once (tests check wrong passwords).
        tmp.write_text(f"{address}:{{PLAIN}}{password}::::::nodelay=y\n")
        tmp.chmod(0o600)
        # The auth process runs as the `dovecot` user.
        os.chown(tmp, self._dovecot_uid, self._dovecot_gid)
        if target.exists():
            # Dovecot notices a change by mtime (seconds) or size: keep mtime moving.
            mtime = int(max(time.time(), target.stat().st_mtime + 1))
            os.utime(tmp, (mtime, mtime))
        tmp.replace(target)

    def _write_dovecot_conf(self, base: Path) -> None:
        d = base / "dovecot"
        tls = base / "tls"
        oauth_mechanisms = oauth_passdb = password_mechanisms = ""
        if self.oauth2_introspection_url:
            oauth_mechanisms = " xoauth2 oauthbearer"
            password_mechanisms = "\n  mechanisms = plain login"
            oauth_passdb = f"""\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {d}/oauth2.conf.ext
}}
"""
            # RFC 7662 introspection by POST; the answer's `username` must be the SASL user.
            (d / "oauth2.conf.ext").write_text(
                f"""\
introspection_mode = post
introspection_url = {self.oauth2_introspection_url}
username_attribute = username
active_attribute = active
active_value = true
force_introspection = yes
timeout_msecs = 10000
"""
            )
        conf = f"""\
# Generated by tests/support/mailstack.py
protocols = imap pop3 lmtp
listen = {self.host}
hostname = mail.test
base_dir = {d}/run
state_dir = {d}/state
instance_name = {base.name}
log_path = {d}/dovecot.log
log_timestamp = "%Y-%m-%d %H:%M:%S "
shutdown_clients = yes
# No stats service connections: they slow down shutdown (5 s handshake timeouts).
stats_writer_socket_path =

ssl = yes
ssl_cert = <{tls}/server-chain.pem
ssl_key = <{tls}/server-key.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain login{oauth_mechanisms}
auth_failure_delay = 0
auth_cache_size = 0
auth_verbose = yes

first_valid_uid = {self._mail_uid}
first_valid_gid = {self._mail_gid}
mail_uid = {self._mail_uid}
mail_gid = {self._mail_gid}
mail_location = maildir:~/Maildir
mail_fsync = never
pop3_uidl_format = %08Xu%08Xv

{oauth_passdb}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {d}/passwd/%Ld/%Ln{password_mechanisms}
}}
userdb {{
  driver = static
  args = uid={self._mail_uid} gid={self._mail_gid} home={base}/mail/%Ld/%Ln allow_all_users=yes
}}

service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {self.host}
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    address = {self.host}
    port = {self.pop3s_port}
    ssl = yes
  }}
}}
service lmtp {{
  unix_listener lmtp-postfix {{
    mode = 0666
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
# No per-IP auth penalty (2-15 s delays after failed logins from 127.0.0.1).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
postmaster_address = postmaster@{self.domain}
protocol lda {{
  # dovecot-lda runs as the mail user (from Postfix's pipe) and logs by itself.
  log_path = {d}/lda.log
}}
"""
        (d / "dovecot.conf").write_text(conf)

    def _write_postfix_conf(self, base: Path) -> None:
        p = base / "postfix"
        tls = base / "tls"
        run = base / "dovecot" / "run"
        transport = f"lmtp:unix:{run}/lmtp-postfix" if self.delivery == "lmtp" else "dovecot:"
        lda = _DOVECOT_LIBEXEC / "dovecot-lda"
        main_cf = f"""\
# Generated by tests/support/mailstack.py
compatibility_level = 3.6
queue_directory = {p}/queue
data_directory = {p}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {p}/postfix.log
maillog_file_prefixes = {base}
syslog_name = mailstack-postfix

myhostname = mail.test
mydomain = {self.domain}
myorigin = $mydomain
mydestination =
# Postfix only accepts interface addresses here (lo has 127.0.0.1/8); the
# listeners in master.cf bind {self.host} explicitly.
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = {self.host}/32
relayhost =
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
smtputf8_enable = yes
message_size_limit = {self.message_size_limit}
mailbox_size_limit = 0
delay_warning_time = 0h
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
queue_run_delay = 10s
minimal_backoff_time = 10s
maximal_backoff_time = 60s
smtpd_banner = $myhostname ESMTP Mailwright test stack

virtual_mailbox_domains = {", ".join(self.domains)}
virtual_mailbox_maps =
virtual_alias_maps =
virtual_transport = {transport}
lmtp_destination_recipient_limit = 50
dovecot_destination_recipient_limit = 1
default_transport = error:5.7.1 outbound delivery is disabled in the test stack
relay_transport = $default_transport

smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
smtpd_sasl_type = dovecot
smtpd_sasl_path = {run}/auth-postfix
smtpd_sasl_auth_enable = no
smtpd_sasl_security_options = noanonymous
smtpd_tls_auth_only = yes
smtpd_tls_chain_files = {tls}/server-key.pem, {tls}/server-chain.pem
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_tls_session_cache_database =
smtp_tls_security_level = none
"""
        restricted = (
            "  -o smtpd_sasl_auth_enable=yes\n"
            "  -o smtpd_client_restrictions=\n"
            "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
        )
        master_cf = f"""\
# Generated by tests/support/mailstack.py (chroot disabled everywhere)
{self.host}:{self.smtp_port} inet n - n - - smtpd
  -o syslog_name=mailstack-postfix/smtp
{self.host}:{self.submission_port} inet n - n - - smtpd
  -o syslog_name=mailstack-postfix/submission
  -o smtpd_tls_security_level=encrypt
{restricted}{self.host}:{self.smtps_port} inet n - n - - smtpd
  -o syslog_name=mailstack-postfix/smtps
  -o smtpd_tls_wrappermode=yes
{restricted}pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
dovecot   unix  -       n       n       -       -       pipe
  flags=DRh user={self._mail_user}:{self._mail_group}
  argv={lda} -c {base}/dovecot/dovecot.conf -e -f ${{sender}} -d ${{recipient}}
"""
        old = time.time() - 60
        for name, text in (("main.cf", main_cf), ("master.cf", master_cf)):
            path = p / "etc" / name
            path.write_text(text)
            # Postfix waits (up to ~2 s) for a main.cf modified within the last second
            # to become "stable"; backdate the files so it starts at once.
            os.utime(path, (old, old))
        # Queue directory owned by root; post-install creates its subdirectories and
        # the data directory with the right owners when Postfix starts.
        (p / "queue").mkdir(mode=0o755)

    def _run(self, argv: list[str], log: Path, timeout: float = 30.0) -> int:
        """Run a start command, appending its output to ``log``.

        Output goes through a pseudo-terminal: postfix(1) only reports errors on
        stderr when it is a tty (otherwise only to syslog, which is absent here).
        Nothing is read after the command exits, so daemons it leaves behind
        cannot block us by holding the terminal open.
        """
        env = _env()
        master_fd, slave_fd = pty.openpty()
        chunks: list[bytes] = []
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave_fd, stderr=slave_fd, env=env)
            os.close(slave_fd)
            slave_fd = -1
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                readable, _, _ = select.select([master_fd], [], [], 0.05)
                if readable:
                    try:
                        chunk = os.read(master_fd, 65536)
                    except OSError:  # EIO: every holder of the terminal closed it
                        chunk = b""
                    if chunk:
                        chunks.append(chunk)
                        continue
                    break
                if proc.poll() is not None:
                    break
            try:
                return proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise MailStackError(f"{' '.join(argv)} timed out after {timeout}s") from None
        finally:
            if slave_fd >= 0:
                os.close(slave_fd)
            os.close(master_fd)
            with log.open("ab") as out:
                out.write(b"".join(chunks).replace(b"\r\n", b"\n"))

    def _start_dovecot(self, base: Path) -> None:
        # Foreground (-F) in its own session: the master stays our child, so we reap
        # it ourselves on stop instead of leaving a zombie for init.
        d = base / "dovecot"
        dovecot = _which("dovecot") or "dovecot"
        with (d / "dovecot.stderr").open("ab") as err:
            proc = subprocess.Popen(
                [dovecot, "-F", "-c", str(d / "dovecot.conf")],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=_env(),
                start_new_session=True,
            )
        self._dovecot_proc = proc
        self._dovecot_master_pid = proc.pid
        pidfile = d / "run" / "master.pid"
        deadline = time.monotonic() + 10
        while _read_pid(pidfile) != proc.pid:
            if (rc := proc.poll()) is not None:
                raise MailStackError(f"dovecot exited with status {rc}")
            if time.monotonic() > deadline:
                raise MailStackError("dovecot did not write its master.pid")
            time.sleep(0.01)

    def _start_postfix(self, base: Path) -> None:
        p = base / "postfix"
        postfix = _which("postfix") or "postfix"
        # As a child subreaper we adopt the daemonized master, so we can reap it (and
        # its children) on stop instead of leaving zombies to a slow init.
        with _subreaper():
            rc = self._run([postfix, "-c", str(p / "etc"), "start"], p / "postfix-start.out")
        pid = _read_pid(p / "queue" / "pid" / "master.pid")
        self._postfix_master_pid = pid
        if rc != 0:
            raise MailStackError(f"postfix start exited with status {rc}")
        if pid is None or not _pid_alive(pid):
            raise MailStackError("postfix master is not running after start")

    def _wait_ready(self, base: Path) -> None:
        run = base / "dovecot" / "run"
        sockets = [run / "lmtp-postfix", run / "auth-postfix"]
        deadline = time.monotonic() + 15
        pending = set(_PORT_NAMES)
        while True:
            listening = _listening(self.host)
            pending = {name for name in pending if getattr(self, name) not in listening}
            missing = [s for s in sockets if not s.exists()]
            if not pending and not missing:
                return
            for label, pid in (
                ("postfix", self._postfix_master_pid),
                ("dovecot", self._dovecot_master_pid),
            ):
                if pid is None or not _pid_alive(pid):
                    raise MailStackError(f"{label} master process died during startup")
            if time.monotonic() > deadline:
                waiting = sorted(pending) + [str(s) for s in missing]
                raise MailStackError(f"servers not ready after 15s: {', '.join(waiting)}")
            time.sleep(0.02)

    def _stop_servers(self, base: Path) -> None:
        candidates = (
            (self._postfix_master_pid, base / "postfix" / "queue" / "pid" / "master.pid"),
            (self._dovecot_master_pid, base / "dovecot" / "run" / "master.pid"),
        )
        self._postfix_master_pid = self._dovecot_master_pid = None
        pids = {pid for known, pidfile in candidates if (pid := known or _read_pid(pidfile))}
        masters = [pid for pid in pids if _is_our_master(pid)]
        # A master that died during a failed start may be our unreaped zombie child.
        _reap({pid for pid in pids if _is_zombie_master(pid)}, timeout=0)
        # Children orphaned while the masters shut down are adopted (and reaped) by
        # us rather than by init, which may reap zombies only every second or so.
        with _subreaper():
            members = _terminate_sessions(masters)
            proc, self._dovecot_proc = self._dovecot_proc, None
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
                members.discard(proc.pid)
            _reap(members)

    def _log_tails(self) -> str:
        if self._base is None:
            return ""
        p = self._base / "postfix"
        d = self._base / "dovecot"
        return "\n".join(
            _tail(path)
            for path in (
                p / "postfix-start.out",
                p / "postfix.log",
                d / "dovecot.stderr",
                d / "dovecot.log",
                d / "lda.log",
            )
        )


def make_message(
    sender: str, recipient: str, subject: str, body: str, *, msgid_domain: str = "mail.test"
) -> bytes:
    """A small CRLF-terminated RFC 5322 message (handy for tests)."""
    lines = [
        f"From: {sender}",
        f"To: {recipient}",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(localtime=False)}",
        f"Message-ID: {email.utils.make_msgid(domain=msgid_domain)}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        *body.splitlines(),
    ]
    return ("\r\n".join(lines) + "\r\n").encode()
