"""The IMAP and POP3 clients against the real Dovecot of the mail stack.

Also the pure parts (modified UTF-7 folder names, UID sets, response parsing), which
need no server.
"""

from __future__ import annotations

import asyncio
import base64
import email
import itertools
import smtplib
import socket
import time
import traceback
import uuid
from email import policy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwright.domain.connection_test import ConnectionTestReport, ConnectionTestStep
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
from mailwright.secrets import Secret
from mailwright.transport.imap import (
    IMAPConnection,
    IMAPEndpoint,
    decode_mailbox_name,
    encode_mailbox_name,
    parse_fetch_bodies,
    parse_list,
    parse_search,
    uid_set,
)
from mailwright.transport.imap import client as imap_module
from mailwright.transport.imap import connection_report as imap_report
from mailwright.transport.pop3 import POP3Connection, POP3Endpoint
from mailwright.transport.pop3 import connection_report as pop3_report
from mailwright.transport.smtp import Login
from mailwright.transport.tls import build_ssl_context
from tests.support.mailstack import MailStack, make_message

pytestmark = pytest.mark.timeout(90)

_names = itertools.count()

# --- modified UTF-7 and other pure functions ---------------------------------------


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("INBOX", "INBOX"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("Ähren", "&AMQ-hren"),
        ("Tom & Jerry", "Tom &- Jerry"),
        ("日本語", "&ZeVnLIqe-"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501's example
        ("😀", "&2D3eAA-"),  # a surrogate pair in UTF-16
        ("", ""),
    ],
)
def test_modified_utf7_known_values(text: str, encoded: str) -> None:
    assert encode_mailbox_name(text) == encoded
    assert decode_mailbox_name(encoded) == text


@given(st.text())
def test_modified_utf7_round_trip(text: str) -> None:
    encoded = encode_mailbox_name(text)
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert decode_mailbox_name(encoded) == text


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E).filter(lambda c: c != "&")))
def test_modified_utf7_leaves_printable_ascii_alone(text: str) -> None:
    assert encode_mailbox_name(text) == text


@pytest.mark.parametrize("raw", ["&", "&AMQ", "&A-", "&AM*-", "Entwürfe", "&2D0-", "&AAAA-x\x01"])
def test_modified_utf7_refuses_malformed_names(raw: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        decode_mailbox_name(raw)


def test_uid_sets_and_response_parsing() -> None:
    assert uid_set([7, 1, 2, 3, 3, 9, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
    with pytest.raises(ValidationError):
        uid_set([0, 1])
    assert parse_search([b"4 2 9 (MODSEQ 12)"]) == [2, 4, 9]
    assert parse_search([None]) == []
    data: list[Any] = [
        (b"1 (UID 5 BODY[] {3}", b"abc"),
        b")",
        b"2 (UID 6 FLAGS (\\Seen))",  # unsolicited: no body
        (b"3 (BODY[] {2}", b"xy"),
        b" UID 8)",  # the UID after the literal
    ]
    assert parse_fetch_bodies(data) == {5: b"abc", 8: b"xy"}
    folders = parse_list(
        [
            b'(\\HasNoChildren) "." INBOX',
            b'(\\Noselect \\HasChildren) "/" "Tom &- \\"J\\""',
            (b'(\\HasNoChildren) "." {9}', b"&AMQ-hren"),
            b"(\\HasNoChildren) NIL Flat",
        ]
    )
    assert [(f.name, f.delimiter, f.selectable) for f in folders] == [
        ("INBOX", ".", True),
        ('Tom & "J"', "/", False),
        ("Ähren", ".", True),
        ("Flat", None, True),
    ]


# --- helpers for the real server --------------------------------------------------


def mailbox(stack: MailStack) -> tuple[str, str]:
    """A fresh mailbox user (address, password) so each test reads only its own mail."""
    local = f"r{next(_names)}x{uuid.uuid4().hex[:6]}"
    password = f"pw-{uuid.uuid4().hex}"
    return stack.add_user(local, password), password


def deliver(stack: MailStack, address: str, subjects: list[str]) -> None:
    """Send messages through Postfix's port-25-like port and wait until Dovecot has them."""
    before = len(stack.maildir_messages(address))
    with smtplib.SMTP(stack.host, stack.smtp_port, timeout=10) as smtp:
        for subject in subjects:
            body = f"Body of {subject}\nsecond line\n.leading dot\n" + "x" * 3000
            smtp.sendmail(
                "sender@example.org", [address], make_message("sender@example.org", address, subject, body)
            )
    stack.wait_for_maildir(address, before + len(subjects), timeout=20)


def login_for(user: tuple[str, str], key: str = "reader-key") -> Login:
    return Login(key_name=key, username=user[0], password=Secret(user[1]))


def imap_endpoint(
    stack: MailStack, security: str, *, port: int | None = None, ca: Any = None, connect_timeout: float = 5.0
) -> IMAPEndpoint:
    mode = Security(security)
    default = {
        Security.SSL: stack.imaps_port,
        Security.STARTTLS: stack.imap_port,
        Security.NONE: stack.imap_port,
    }
    return IMAPEndpoint(
        target_name="Dovecot IMAP",
        host=stack.host,
        port=port or default[mode],
        security=mode,
        ssl_context=build_ssl_context(ca_file=str(ca or stack.ca_cert_path), verify=True),
        connect_timeout=connect_timeout,
        command_timeout=15.0,
    )


def pop3_endpoint(
    stack: MailStack, security: str, *, port: int | None = None, ca: Any = None, connect_timeout: float = 5.0
) -> POP3Endpoint:
    mode = Security(security)
    default = {
        Security.SSL: stack.pop3s_port,
        Security.STARTTLS: stack.pop3_port,
        Security.NONE: stack.pop3_port,
    }
    return POP3Endpoint(
        target_name="Dovecot POP3",
        host=stack.host,
        port=port or default[mode],
        security=mode,
        ssl_context=build_ssl_context(ca_file=str(ca or stack.ca_cert_path), verify=True),
        connect_timeout=connect_timeout,
        command_timeout=15.0,
    )


def subject_of(raw: bytes) -> str:
    return str(email.message_from_bytes(raw, policy=policy.default)["Subject"])


def assert_secret_absent(error: BaseException, password: str, username: str) -> None:
    """Neither the password nor any base64 form of it is in the error, however it is shown."""
    token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    shown = [
        str(error),
        repr(error),
        repr(error.args),
        "".join(traceback.format_exception(error)),
        repr(getattr(error, "details", lambda: {})()),
        repr(vars(error)),
    ]
    for text in shown:
        assert password not in text
        assert token not in text
        assert base64.b64encode(password.encode()).decode()[:-4] not in text


@pytest.fixture
def free_port() -> int:
    """A port on the stack's address where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        port: int = sock.getsockname()[1]
    return port


# --- IMAP ------------------------------------------------------------------------


@pytest.mark.parametrize("security", ["ssl", "starttls"])
async def test_imap_reads_flags_moves_and_deletes(mailstack: MailStack, security: str) -> None:
    user = mailbox(mailstack)
    deliver(mailstack, user[0], ["first", "second", "third"])
    folder = f"Archiv Ünïcødé 日本 & Co {uuid.uuid4().hex[:4]}"
    async with IMAPConnection(imap_endpoint(mailstack, security)) as imap:
        await imap.open(login_for(user))
        assert imap.authenticated_as == user[0]
        assert imap.auth_mechanism == "AUTHENTICATE PLAIN"
        assert {"IDLE", "UIDPLUS", "MOVE", "CONDSTORE"} <= imap.capabilities
        assert imap.tls is not None and imap.tls.verified and imap.tls.version in ("TLSv1.2", "TLSv1.3")
        assert imap.tls.certificate is not None and "mail.test" in imap.tls.certificate.names
        for stage in ("connect", "login", "capability", "tls" if security == "ssl" else "starttls"):
            assert imap.timings[stage] >= 0

        uidvalidity, exists = await imap.select("INBOX")
        assert uidvalidity > 0 and exists == 3
        uids = await imap.search_uids("ALL")
        assert len(uids) == 3
        bodies = await imap.fetch_rfc822(uids)
        # Postfix delivers the three in parallel: find out which UID got which message.
        uid_of = {subject_of(raw): uid for uid, raw in bodies.items()}
        assert sorted(uid_of) == ["first", "second", "third"]
        first, second, third = uid_of["first"], uid_of["second"], uid_of["third"]
        assert await imap.search_uids('SUBJECT "second"') == [second]
        assert b"\r\n.leading dot\r\n" in bodies[first]
        # BODY.PEEK[]: reading did not mark anything \Seen.
        assert await imap.search_uids("UNSEEN") == uids
        assert all("\\Seen" not in flags for flags in (await imap.fetch_flags(uids)).values())

        await imap.add_flags([first], ["\\Seen", "\\Flagged", "$Mailwright"])
        flags = await imap.fetch_flags([first])
        assert {"\\Seen", "\\Flagged", "$Mailwright"} <= flags[first]
        await imap.remove_flags([first], ["\\Flagged"])
        assert "\\Flagged" not in (await imap.fetch_flags([first]))[first]
        assert await imap.search_uids("SEEN") == [first]

        assert await imap.create_folder(folder) is True
        assert await imap.create_folder(folder) is False  # already there
        names = {f.name: f for f in await imap.list_folders()}
        assert folder in names
        assert names[folder].raw_name == encode_mailbox_name(folder)
        assert "&" in names[folder].raw_name and names[folder].raw_name.isascii()

        await imap.move([first], folder)
        assert await imap.search_uids("ALL") == sorted([second, third])
        await imap.delete([second])
        assert await imap.search_uids("ALL") == [third]

        _validity, moved = await imap.select(folder)
        assert moved == 1
        (moved_uid,) = await imap.search_uids("ALL")
        (raw,) = (await imap.fetch_rfc822([moved_uid])).values()
        assert subject_of(raw) == "first"
        assert "\\Seen" in (await imap.fetch_flags([moved_uid]))[moved_uid]  # flags travel along
    assert "logout" in imap.timings
    # Dovecot keeps the folder as a Maildir++ directory named in modified UTF-7.
    maildir = mailstack.maildir_path(user[0])
    assert (maildir / f".{encode_mailbox_name(folder)}").is_dir()


@pytest.mark.parametrize("dropped", [{"MOVE"}, {"MOVE", "UIDPLUS"}])
async def test_imap_move_without_move_extension(mailstack: MailStack, dropped: set[str]) -> None:
    """COPY + \\Deleted + UID EXPUNGE (UIDPLUS), or plain EXPUNGE when that is missing too."""
    user = mailbox(mailstack)
    deliver(mailstack, user[0], ["keep", "move me"])
    async with IMAPConnection(imap_endpoint(mailstack, "ssl")) as imap:
        await imap.open(login_for(user))
        imap.capabilities -= dropped
        await imap.select("INBOX")
        (move,) = await imap.search_uids('SUBJECT "move me"')
        (keep,) = await imap.search_uids('NOT SUBJECT "move me"')
        await imap.create_folder("Done")
        await imap.move([move], "Done")
        assert await imap.search_uids("ALL") == [keep]
        assert "copy" in imap.timings and "expunge" in imap.timings and "move" not in imap.timings
        _validity, count = await imap.select("Done")
        assert count == 1
        await imap.delete(await imap.search_uids("ALL"))
        assert await imap.search_uids("ALL") == []


async def test_imap_command_refusals_keep_the_connection(mailstack: MailStack) -> None:
    user = mailbox(mailstack)
    async with IMAPConnection(imap_endpoint(mailstack, "ssl")) as imap:
        await imap.open(login_for(user))
        with pytest.raises(TargetError, match="no folder is selected"):
            await imap.search_uids("ALL")
        with pytest.raises(TargetError, match="doesn't exist") as info:
            await imap.select("No such folder")
        assert info.value.stage == "select" and info.value.hint and "list_folders" in info.value.hint
        await imap.select("INBOX")
        with pytest.raises(TargetError, match="answered search with an error"):
            await imap.search_uids("NOSUCHKEY 1")
        with pytest.raises(ValidationError):
            await imap.search_uids('SUBJECT "ünïcode"')
        with pytest.raises(ValidationError):
            await imap.add_flags([1], ["bad flag"])
        deliver(mailstack, user[0], ["x"])
        await imap.select("INBOX")
        uids = await imap.search_uids("ALL")
        with pytest.raises(TargetError, match="TRYCREATE") as moved:
            await imap.move(uids, "Missing folder")
        assert moved.value.hint == "the folder does not exist: create it first"
        assert await imap.search_uids("ALL")  # still connected and usable


async def test_imap_login_command_when_authenticate_is_not_used(
    mailstack: MailStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imap_module, "_MECHANISMS", ("LOGIN",))
    user = mailbox(mailstack)
    async with IMAPConnection(imap_endpoint(mailstack, "starttls")) as imap:
        await imap.open(login_for(user))
        assert imap.auth_mechanism == "LOGIN"
        assert (await imap.select("INBOX"))[1] == 0


@pytest.mark.parametrize("security", ["ssl", "starttls"])
async def test_imap_connection_report(mailstack: MailStack, security: str) -> None:
    user = mailbox(mailstack)
    report = await imap_report(imap_endpoint(mailstack, security), login_for(user))
    assert report["ok"], report["error"]
    assert report["protocol"] == "IMAP" and report["error"] is None
    names = [s["name"] for s in report["steps"]]
    tls_step = "tls" if security == "ssl" else "starttls"
    assert names == ["connect", tls_step, "login", "capability", "logout"]
    assert all(s["ok"] for s in report["steps"])
    caps = report["capabilities"]
    assert caps["idle"] and caps["uidplus"] and caps["move"] and caps["condstore"]
    assert caps["starttls"] is (security == "starttls")
    assert "PLAIN" in caps["auth"] and "IMAP4REV1" in caps["raw"]
    assert report["greeting"].startswith("* OK") and "Dovecot" in report["greeting"]
    assert report["tls"]["verified"] and "mail.test" in report["tls"]["certificate"]["names"]
    assert report["authenticated_as"] == user[0]
    assert report["auth_mechanism"] == "AUTHENTICATE PLAIN"
    assert report["warnings"] == []
    assert report["total_ms"] > 0
    # The same shape as every target type's connection test.
    fields = {**report, "steps": [ConnectionTestStep(**s) for s in report["steps"]]}
    assert ConnectionTestReport(**fields).as_dict() == report


# --- POP3 ------------------------------------------------------------------------


@pytest.mark.parametrize("security", ["ssl", "starttls"])
async def test_pop3_reads_and_deletes(mailstack: MailStack, security: str) -> None:
    user = mailbox(mailstack)
    deliver(mailstack, user[0], ["one", "two"])
    endpoint = pop3_endpoint(mailstack, security)
    async with POP3Connection(endpoint) as pop:
        await pop.open(login_for(user))
        assert pop.authenticated_as == user[0] and pop.auth_mechanism == "SASL PLAIN"
        assert {"UIDL", "TOP"} <= pop.capabilities
        assert pop.tls is not None and pop.tls.verified
        count, size = await pop.stat()
        assert count == 2 and size > 6000
        ids = await pop.uidl()
        assert sorted(ids) == [1, 2] and len(set(ids.values())) == 2
        heads = {number: await pop.top(number, 0) for number in ids}
        number_of = {subject_of(head): number for number, head in heads.items()}
        one, two = number_of["one"], number_of["two"]
        assert b"Body of" not in heads[one]
        assert (await pop.top(one, 1)).endswith(b"Body of one\r\n")
        raw = await pop.retrieve(two)
        assert subject_of(raw) == "two"
        assert b"\r\n.leading dot\r\n" in raw  # dot-stuffing undone
        assert b"x" * 3000 in raw  # a line longer than poplib's 2048-byte limit
        await pop.delete(one)
        with pytest.raises(TargetError, match="RETR") as info:
            await pop.retrieve(one)  # marked deleted: the server refuses, the session goes on
        assert info.value.stage == "retr"
        assert (await pop.stat())[0] == 1  # messages marked deleted are not counted
    # QUIT committed the deletion.
    async with POP3Connection(endpoint) as pop:
        await pop.open(login_for(user))
        after = await pop.uidl()
        assert list(after.values()) == [ids[two]]


async def test_pop3_failed_block_rolls_deletions_back(mailstack: MailStack) -> None:
    user = mailbox(mailstack)
    deliver(mailstack, user[0], ["stays"])
    endpoint = pop3_endpoint(mailstack, "ssl")

    async def process_and_fail() -> None:
        async with POP3Connection(endpoint) as pop:
            await pop.open(login_for(user))
            await pop.delete(1)
            raise RuntimeError("processing failed")

    with pytest.raises(RuntimeError, match="processing failed"):
        await process_and_fail()
    async with POP3Connection(endpoint) as pop:
        await pop.open(login_for(user))
        assert (await pop.stat())[0] == 1


@pytest.mark.parametrize("security", ["ssl", "starttls"])
async def test_pop3_connection_report(mailstack: MailStack, security: str) -> None:
    user = mailbox(mailstack)
    report = await pop3_report(pop3_endpoint(mailstack, security), login_for(user))
    assert report["ok"], report["error"]
    names = [s["name"] for s in report["steps"]]
    if security == "ssl":
        assert names == ["connect", "tls", "capability", "login", "logout"]
    else:
        assert names == ["connect", "capability", "starttls", "login", "logout"]
    caps = report["capabilities"]
    assert caps["uidl"] and caps["top"] and caps["user"]
    assert caps["stls"] is (security == "starttls")
    assert "PLAIN" in caps["sasl"] and "UIDL" in caps["raw"]
    assert report["greeting"].startswith("+OK")
    assert report["tls"]["verified"]
    assert report["authenticated_as"] == user[0] and report["warnings"] == []
    fields = {**report, "steps": [ConnectionTestStep(**s) for s in report["steps"]]}
    assert ConnectionTestReport(**fields).as_dict() == report


# --- diagnoses -------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "name"), [("imap", "IMAP"), ("pop3", "POP3")])
async def test_implicit_tls_on_a_starttls_port(mailstack: MailStack, protocol: str, name: str) -> None:
    if protocol == "imap":
        port = mailstack.imap_port
        report = await imap_report(imap_endpoint(mailstack, "ssl", port=port), None)
    else:
        port = mailstack.pop3_port
        report = await pop3_report(pop3_endpoint(mailstack, "ssl", port=port), None)
    assert not report["ok"]
    error = report["error"]
    assert error["code"] == "tls_error" and error["stage"] == "tls"
    assert "answered in plain text" in error["message"]
    assert error["hint"] == f"port {port} speaks plain {name} first: choose starttls"
    assert [(s["name"], s["ok"]) for s in report["steps"]] == [("connect", True), ("tls", False)]


@pytest.mark.parametrize(
    ("protocol", "security"), list(itertools.product(["imap", "pop3"], ["starttls", "none"]))
)
async def test_starttls_or_plain_on_an_implicit_tls_port(
    mailstack: MailStack, protocol: str, security: str
) -> None:
    user = mailbox(mailstack)
    started = time.monotonic()
    connection: IMAPConnection | POP3Connection
    if protocol == "imap":
        port = mailstack.imaps_port
        connection = IMAPConnection(imap_endpoint(mailstack, security, port=port, connect_timeout=1.5))
    else:
        port = mailstack.pop3s_port
        connection = POP3Connection(pop3_endpoint(mailstack, security, port=port, connect_timeout=1.5))
    with pytest.raises(TargetTLSError) as info:
        await connection.open(login_for(user))
    assert time.monotonic() - started < 10
    error = info.value
    assert error.stage == "connect"
    assert "completed a TLS handshake" in error.message and f"set to {security}" in error.message
    assert error.hint == f"port {port} expects implicit TLS: choose ssl"
    assert isinstance(error.__cause__, TargetTimeoutError)


@pytest.mark.parametrize(
    ("protocol", "security"), list(itertools.product(["imap", "pop3"], ["ssl", "starttls"]))
)
async def test_untrusted_certificate_names_issuer_and_names(
    mailstack: MailStack, protocol: str, security: str
) -> None:
    user = mailbox(mailstack)
    connection: IMAPConnection | POP3Connection
    if protocol == "imap":
        connection = IMAPConnection(imap_endpoint(mailstack, security, ca=mailstack.other_ca_path))
    else:
        connection = POP3Connection(pop3_endpoint(mailstack, security, ca=mailstack.other_ca_path))
    with pytest.raises(CertificateUntrustedError) as info:
        await connection.open(login_for(user))
    error = info.value
    assert error.stage == ("tls" if security == "ssl" else "starttls")
    assert "Mailwright Test CA" in error.message  # the issuer
    assert "mail.test" in error.message and "localhost" in error.message  # the names
    assert error.hint is not None and "--ca-file" in error.hint and "Mailwright Test CA" in error.hint
    assert connection.authenticated_as is None


@pytest.mark.parametrize(
    ("protocol", "security", "mechanism"),
    [
        ("imap", "ssl", "AUTHENTICATE PLAIN"),
        ("imap", "starttls", "LOGIN"),
        ("pop3", "ssl", "SASL PLAIN"),
        ("pop3", "starttls", "SASL PLAIN"),
    ],
)
async def test_wrong_password(
    mailstack: MailStack, monkeypatch: pytest.MonkeyPatch, protocol: str, security: str, mechanism: str
) -> None:
    user = mailbox(mailstack)
    wrong = f"Wrong-{uuid.uuid4().hex}-ü"
    login = Login(key_name="ops-mailbox", username=user[0], password=Secret(wrong))
    if mechanism == "LOGIN":
        monkeypatch.setattr(imap_module, "_MECHANISMS", ("LOGIN",))
        wrong = f"Wrong-{uuid.uuid4().hex}"  # the LOGIN command carries ASCII only
        login = Login(key_name="ops-mailbox", username=user[0], password=Secret(wrong))
    connection: IMAPConnection | POP3Connection
    if protocol == "imap":
        connection = IMAPConnection(imap_endpoint(mailstack, security))
    else:
        connection = POP3Connection(pop3_endpoint(mailstack, security))
    with pytest.raises(TargetAuthError) as info:
        await connection.open(login)
    error = info.value
    assert error.stage == "login" and error.code == "auth_error"
    assert "'ops-mailbox'" in error.message and user[0] in error.message
    assert "Authentication failed" in error.message
    assert error.hint is not None and "app password" in error.hint and "Microsoft 365" in error.hint
    assert error.__cause__ is None and error.__context__ is None
    assert_secret_absent(error, wrong, user[0])
    assert connection.authenticated_as is None


async def test_wrong_password_in_the_report(mailstack: MailStack) -> None:
    user = mailbox(mailstack)
    wrong = f"Nope-{uuid.uuid4().hex}"
    login = Login(key_name="ops-mailbox", username=user[0], password=Secret(wrong))
    report = await imap_report(imap_endpoint(mailstack, "ssl"), login)
    assert not report["ok"]
    assert report["error"]["code"] == "auth_error" and report["error"]["hint"]
    assert [(s["name"], s["ok"]) for s in report["steps"]][-2:] == [("login", False), ("logout", True)]
    assert wrong not in repr(report)
    pop = await pop3_report(pop3_endpoint(mailstack, "starttls"), login)
    assert pop["error"]["code"] == "auth_error" and wrong not in repr(pop)


@pytest.mark.parametrize(("protocol", "command"), [("imap", "STARTTLS"), ("pop3", "STLS")])
async def test_login_before_starttls_is_not_attempted(
    mailstack: MailStack, protocol: str, command: str
) -> None:
    """Port 143/110 with security none: Dovecot allows login only after STARTTLS/STLS."""
    user = mailbox(mailstack)
    connection: IMAPConnection | POP3Connection
    if protocol == "imap":
        connection = IMAPConnection(imap_endpoint(mailstack, "none"))
    else:
        connection = POP3Connection(pop3_endpoint(mailstack, "none"))
    with pytest.raises(TargetAuthError) as info:
        await connection.open(login_for(user))
    error = info.value
    assert error.stage == "login"
    assert "the password was not sent" in error.message
    assert error.hint == f"the server allows login only after {command}: choose starttls"
    assert connection.tls is None
    if protocol == "imap":
        assert "LOGINDISABLED" in error.message


async def test_security_none_reports_the_missing_tls(mailstack: MailStack) -> None:
    report = await imap_report(imap_endpoint(mailstack, "none"), None)
    assert report["ok"] and report["tls"] is None
    assert "LOGINDISABLED" in report["capabilities"]["raw"] and report["capabilities"]["starttls"]
    assert any("plain text" in w for w in report["warnings"])
    assert any("no account key" in w for w in report["warnings"])


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_connection_refused(mailstack: MailStack, free_port: int, protocol: str) -> None:
    connection: IMAPConnection | POP3Connection
    if protocol == "imap":
        connection = IMAPConnection(imap_endpoint(mailstack, "ssl", port=free_port))
    else:
        connection = POP3Connection(pop3_endpoint(mailstack, "ssl", port=free_port))
    with pytest.raises(TargetConnectError, match=f"nothing listens on port {free_port}") as info:
        await connection.open(None)
    assert info.value.stage == "connect" and info.value.transient
    assert info.value.hint is not None and protocol.upper() in info.value.hint


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_silent_server_times_out(mailstack: MailStack, protocol: str) -> None:
    """A server that accepts the connection but never greets: bounded by the connect timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.2", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        connection: IMAPConnection | POP3Connection
        if protocol == "imap":
            connection = IMAPConnection(imap_endpoint(mailstack, "starttls", port=port, connect_timeout=0.5))
        else:
            connection = POP3Connection(pop3_endpoint(mailstack, "starttls", port=port, connect_timeout=0.5))
        started = time.monotonic()
        with pytest.raises(TargetTimeoutError) as info:
            await connection.open(None)
        assert time.monotonic() - started < 10  # bounded by the connect timeout, not hanging
    assert info.value.stage == "connect" and info.value.transient
    assert info.value.hint is not None and "choose ssl" in info.value.hint


async def test_cancelled_command_frees_the_worker(mailstack: MailStack) -> None:
    """Cancelling a command in flight shuts the socket down at once; the connection is closed."""
    user = mailbox(mailstack)
    async with IMAPConnection(imap_endpoint(mailstack, "ssl")) as imap:
        await imap.open(login_for(user))
        client = imap._require()
        sock = client.sock
        # Waiting for a line the server never sends: blocks for the command timeout (15 s).
        task = asyncio.ensure_future(imap._run(client.readline))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 10
        while sock.fileno() != -1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert sock.fileno() == -1, "the worker thread did not let go of the socket"
        assert time.monotonic() - started < 10  # not the 15 s command timeout
        with pytest.raises(TargetConnectError, match="not connected"):
            await imap.search_uids("ALL")
