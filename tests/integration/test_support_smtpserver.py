"""Proves tests/support/smtpserver.py with the standard library's smtplib.

Every client call has a timeout; fault tests use short ones so the module stays fast.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable

import aiosmtplib
import pytest

from tests.support.smtpserver import (
    Faults,
    RawLineServer,
    SMTPServerFactory,
    SMTPTestServer,
)
from tests.support.tlsfiles import TLSFiles

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 5.0
SHORT = 0.3
CLIENT_NAME = "client.test"
SENDER = "sender@example.com"
RCPT = "rcpt@example.net"
USERS = {"alice": "s3cret"}
MESSAGE = (
    b"From: sender@example.com\r\n"
    b"To: rcpt@example.net\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Body line\r\n"
    b".leading dot survives dot-stuffing\r\n"
)


def smtp_client(server: SMTPTestServer | RawLineServer, timeout: float = TIMEOUT) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, local_hostname=CLIENT_NAME, timeout=timeout)


def smtp_ssl_client(
    server: SMTPTestServer | RawLineServer, context: ssl.SSLContext, timeout: float = TIMEOUT
) -> smtplib.SMTP_SSL:
    return smtplib.SMTP_SSL(
        server.host, server.port, local_hostname=CLIENT_NAME, context=context, timeout=timeout
    )


def wait_until(predicate: Callable[[], object], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def send_plain(server: SMTPTestServer, timeout: float = TIMEOUT) -> dict[str, tuple[int, bytes]]:
    with smtp_client(server, timeout) as smtp:
        return smtp.sendmail(SENDER, [RCPT], MESSAGE)


# --------------------------------------------------------------------------------------
# Plain delivery and the server's own API
# --------------------------------------------------------------------------------------


def test_plain_send_is_captured(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory()
    with smtp_client(server) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        assert not smtp.has_extn("starttls")
        assert not smtp.has_extn("size")
        refused = smtp.sendmail(SENDER, [RCPT, "second@example.net"], MESSAGE)
    assert refused == {}
    [received] = server.messages
    assert received.mail_from == SENDER
    assert received.rcpt_tos == [RCPT, "second@example.net"]
    assert received.content == MESSAGE
    assert received.smtputf8 is False
    assert received.auth_login is None
    assert received.tls is False
    assert server.connections == 1
    assert server.dropped == []
    assert server.errors == []


def test_null_sender_is_empty_string(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory()
    with smtp_client(server) as smtp:
        smtp.sendmail("", [RCPT], MESSAGE)
    assert server.messages[0].mail_from == ""


def test_wait_for_blocks_until_a_message_arrives(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory()
    sender = threading.Thread(target=send_plain, args=(server,))
    sender.start()
    try:
        assert len(server.wait_for(1, timeout=TIMEOUT)) == 1
    finally:
        sender.join(TIMEOUT)
    with pytest.raises(TimeoutError):
        server.wait_for(2, timeout=0.05)


def test_stop_then_start_again_on_the_same_port(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory()
    port = server.port
    server.stop()
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, port), timeout=TIMEOUT).close()
    server.start()
    assert server.port == port
    send_plain(server)
    assert len(server.messages) == 1


async def test_async_context_manager() -> None:
    async with SMTPTestServer() as server:
        assert server.running
        await asyncio.to_thread(send_plain, server)
        [received] = await server.wait_for_async(1, timeout=TIMEOUT)
        assert received.rcpt_tos == [RCPT]
    assert not server.running


async def test_aiosmtplib_starttls_and_auth(
    smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles
) -> None:
    server = smtp_server_factory(tls="starttls", users=USERS)
    client = aiosmtplib.SMTP(
        hostname=server.host,
        port=server.port,
        local_hostname=CLIENT_NAME,
        start_tls=True,
        tls_context=tls_files.client_context(),
        timeout=TIMEOUT,
    )
    async with client:
        await client.login("alice", "s3cret")
        await client.sendmail(SENDER, [RCPT], MESSAGE)
        sock = client.get_transport_info("socket")
    # aiosmtplib's close() only starts the TLS shutdown; let it finish before this
    # test's event loop is closed, or the socket is reported as unclosed (ResourceWarning).
    deadline = time.monotonic() + TIMEOUT
    while sock.fileno() != -1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    [received] = server.messages
    assert received.tls is True
    assert received.auth_login == "alice"


def test_ipv6_loopback(smtp_server_factory: SMTPServerFactory) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    server = smtp_server_factory(hostname="::1")
    send_plain(server)
    assert len(server.messages) == 1


# --------------------------------------------------------------------------------------
# STARTTLS, implicit TLS and AUTH
# --------------------------------------------------------------------------------------


def test_starttls_offers_auth_only_after_starttls(
    smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles
) -> None:
    server = smtp_server_factory(tls="starttls", users=USERS)
    with smtp_client(server) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")
        code, _ = smtp.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldA==")
        assert code == 538  # encryption required
        smtp.starttls(context=tls_files.client_context())
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        assert set(smtp.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}
        smtp.login("alice", "s3cret")
        smtp.sendmail(SENDER, [RCPT], MESSAGE)
    [received] = server.messages
    assert received.auth_login == "alice"
    assert received.tls is True
    assert server.auth_attempts == [("alice", True)]
    assert server.errors == []


def test_auth_login_with_challenges(smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles) -> None:
    server = smtp_server_factory(tls="starttls", users=USERS)
    with smtp_client(server) as smtp:
        smtp.starttls(context=tls_files.client_context())
        smtp.ehlo()
        smtp.user, smtp.password = "alice", "s3cret"
        code, _ = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        assert code == 235
    assert server.auth_attempts == [("alice", True)]


def test_bad_password_gives_535_without_hanging(
    smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles
) -> None:
    server = smtp_server_factory(tls="starttls", users=USERS)
    with smtp_client(server) as smtp:
        smtp.starttls(context=tls_files.client_context())
        smtp.ehlo()
        smtp.user, smtp.password = "alice", "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError) as excinfo:
            smtp.auth("PLAIN", smtp.auth_plain)
        assert excinfo.value.smtp_code == 535
        assert smtp.noop()[0] == 250  # the session is still usable
    assert server.auth_attempts == [("alice", False)]


def test_auth_required_refuses_mail_without_login(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(users=USERS)  # tls="none": AUTH offered in the clear
    with smtp_client(server) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("auth")
        assert smtp.mail(SENDER)[0] == 530
        smtp.login("alice", "s3cret")
        smtp.sendmail(SENDER, [RCPT], MESSAGE)
    assert server.messages[0].auth_login == "alice"


def test_users_with_auth_not_required(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(users=USERS, auth_required=False)
    send_plain(server)
    assert server.messages[0].auth_login is None


def test_no_users_means_no_auth(smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles) -> None:
    server = smtp_server_factory(tls="starttls")
    with smtp_client(server) as smtp:
        smtp.starttls(context=tls_files.client_context())
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        assert smtp.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldA==")[0] == 502


def test_require_starttls(smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles) -> None:
    server = smtp_server_factory(tls="starttls", require_starttls=True)
    with smtp_client(server) as smtp:
        smtp.ehlo()
        assert smtp.mail(SENDER)[0] == 530
        smtp.starttls(context=tls_files.client_context())
        smtp.sendmail(SENDER, [RCPT], MESSAGE)
    assert server.messages[0].tls is True


def test_implicit_tls_with_auth(smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles) -> None:
    server = smtp_server_factory(tls="ssl", users=USERS)
    with smtp_ssl_client(server, tls_files.client_context()) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        assert smtp.has_extn("auth")
        smtp.login("alice", "s3cret")
        smtp.sendmail(SENDER, [RCPT], MESSAGE)
    [received] = server.messages
    assert received.tls is True
    assert received.auth_login == "alice"
    assert server.connections == 1


def test_implicit_tls_untrusted_ca(smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles) -> None:
    server = smtp_server_factory(tls="ssl")
    with pytest.raises(ssl.SSLCertVerificationError):
        smtp_ssl_client(server, tls_files.untrusting_client_context())
    assert server.connections == 0  # failed handshakes never reach the SMTP layer


def test_starttls_untrusted_ca(smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles) -> None:
    server = smtp_server_factory(tls="starttls")
    context = ssl.create_default_context(cafile=str(tls_files.other_ca_path))
    with smtp_client(server) as smtp, pytest.raises(ssl.SSLCertVerificationError):
        smtp.starttls(context=context)


@pytest.mark.parametrize("tls", ["ssl", "starttls"])
def test_wrong_host_certificate(
    smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles, tls: str
) -> None:
    if tls == "ssl":
        server = smtp_server_factory(tls="ssl", tls_cert="wrong_host")
        with pytest.raises(ssl.SSLCertVerificationError) as excinfo:
            smtp_ssl_client(server, tls_files.client_context())
    else:
        server = smtp_server_factory(tls="starttls", tls_cert="wrong_host")
        with smtp_client(server) as smtp, pytest.raises(ssl.SSLCertVerificationError) as excinfo:
            smtp.starttls(context=tls_files.client_context())
    assert "mismatch" in excinfo.value.verify_message


# --------------------------------------------------------------------------------------
# Fault injection: replies
# --------------------------------------------------------------------------------------


def test_reply_connect_421(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(reply={"connect": (421, "4.3.2 Not now")}))
    with pytest.raises(smtplib.SMTPConnectError) as excinfo:
        smtp_client(server)
    assert excinfo.value.smtp_code == 421
    assert server.faults_applied == [("connect", "reply")]


def test_reply_connect_554_then_503_until_quit(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(reply={"connect": (554, "5.7.1 Go away")}))
    with pytest.raises(smtplib.SMTPConnectError) as excinfo:
        smtp_client(server)
    assert excinfo.value.smtp_code == 554
    with (
        socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock,
        sock.makefile("rb") as lines,
    ):
        assert lines.readline() == b"554 5.7.1 Go away\r\n"
        sock.sendall(b"EHLO client.test\r\n")
        assert lines.readline().startswith(b"503 ")
        sock.sendall(b"QUIT\r\n")
        assert lines.readline().startswith(b"221 ")
        assert lines.readline() == b""


def test_reply_connect_custom_banner(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(reply={"connect": (220, "banner.test hello")}))
    with smtplib.SMTP(local_hostname=CLIENT_NAME, timeout=TIMEOUT) as smtp:
        assert smtp.connect(server.host, server.port) == (220, b"banner.test hello")
        smtp.sendmail(SENDER, [RCPT], MESSAGE)
    assert len(server.messages) == 1


def test_reply_ehlo_then_helo_fallback(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(reply={"ehlo": (502, "5.5.1 No ESMTP")}))
    with smtp_client(server) as smtp:
        assert smtp.ehlo()[0] == 502
        assert smtp.helo()[0] == 250
        smtp.sendmail(SENDER, [RCPT], MESSAGE)
    assert len(server.messages) == 1


def test_reply_helo(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(reply={"helo": (550, "5.7.1 Who are you")}))
    with smtp_client(server) as smtp:
        assert smtp.helo() == (550, b"5.7.1 Who are you")


def test_reply_starttls(smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles) -> None:
    server = smtp_server_factory(
        tls="starttls", faults=Faults(reply={"starttls": (454, "4.7.0 TLS not available")})
    )
    with smtp_client(server) as smtp, pytest.raises(smtplib.SMTPResponseException) as excinfo:
        smtp.starttls(context=tls_files.client_context())
    assert excinfo.value.smtp_code == 454


def test_reply_auth(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(
        users=USERS, faults=Faults(reply={"auth": (454, "4.7.0 Temporary auth failure")})
    )
    with smtp_client(server) as smtp, pytest.raises(smtplib.SMTPAuthenticationError) as excinfo:
        smtp.login("alice", "s3cret")
    assert excinfo.value.smtp_code == 454
    assert server.auth_attempts == []


def test_reply_mail(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(reply={"mail": (451, "4.3.0 Try later")}))
    with pytest.raises(smtplib.SMTPSenderRefused) as excinfo:
        send_plain(server)
    assert excinfo.value.smtp_code == 451
    assert server.messages == []


def test_reply_multiline(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(reply={"mail": (550, "first line\nsecond line")}))
    with pytest.raises(smtplib.SMTPSenderRefused) as excinfo:
        send_plain(server)
    assert excinfo.value.smtp_error == b"first line\nsecond line"


def test_reply_rcpt(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(reply={"rcpt": (550, "5.1.1 Unknown user")}))
    with pytest.raises(smtplib.SMTPRecipientsRefused) as excinfo:
        send_plain(server)
    assert excinfo.value.recipients == {RCPT: (550, b"5.1.1 Unknown user")}


def test_reply_data(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(reply={"data": (554, "5.6.0 Rejected")}))
    with pytest.raises(smtplib.SMTPDataError) as excinfo:
        send_plain(server)
    assert excinfo.value.smtp_code == 554
    assert server.messages == []
    assert len(server.dropped) == 1


def test_reply_data_custom_success_text(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(reply={"data": (250, "2.0.0 Ok: queued as X1")}))
    with smtp_client(server) as smtp:
        smtp.ehlo()
        smtp.mail(SENDER)
        smtp.rcpt(RCPT)
        assert smtp.data(MESSAGE) == (250, b"2.0.0 Ok: queued as X1")
    assert len(server.messages) == 1


def test_refuse_some_recipients(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(
        faults=Faults(refuse_recipients={"Bad@Example.net": (550, "5.1.1 No such user")})
    )
    with smtp_client(server) as smtp:
        refused = smtp.sendmail(SENDER, [RCPT, "bad@example.net"], MESSAGE)
    assert refused == {"bad@example.net": (550, b"5.1.1 No such user")}
    assert server.messages[0].rcpt_tos == [RCPT]


def test_faults_can_be_replaced_while_running(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory()
    server.faults = Faults(reply={"mail": (451, "4.3.0 Later")})
    with pytest.raises(smtplib.SMTPSenderRefused):
        send_plain(server)
    server.faults = None
    send_plain(server)
    assert len(server.messages) == 1


# --------------------------------------------------------------------------------------
# Fault injection: disconnects, delays, fail_times
# --------------------------------------------------------------------------------------


def _converse(server: SMTPTestServer, tls_files: TLSFiles, *, helo: bool = False) -> None:
    """A full session using every feature the server offers."""
    with smtp_client(server) as smtp:
        if helo:
            smtp.helo()
        else:
            smtp.ehlo()
        if smtp.has_extn("starttls"):
            smtp.starttls(context=tls_files.client_context())
            smtp.ehlo()
        if server.users:
            smtp.login("alice", "s3cret")
        smtp.sendmail(SENDER, [RCPT], MESSAGE)


@pytest.mark.parametrize(
    "stage", ["connect", "ehlo", "helo", "starttls", "auth", "mail", "rcpt", "data", "after_data"]
)
def test_disconnect_at(smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles, stage: str) -> None:
    server = smtp_server_factory(
        tls="starttls" if stage == "starttls" else "none",
        users=USERS if stage == "auth" else None,
        faults=Faults(disconnect_at=stage),
    )
    with pytest.raises(smtplib.SMTPServerDisconnected):
        _converse(server, tls_files, helo=stage == "helo")
    assert server.faults_applied == [(stage, "disconnect")]
    assert server.messages == []
    if stage == "after_data":
        wait_until(lambda: server.dropped)
        assert server.dropped[0].content == MESSAGE
    else:
        assert server.dropped == []


@pytest.mark.parametrize("stage", ["connect", "ehlo", "mail", "rcpt", "data"])
def test_delay_causes_client_timeout(smtp_server_factory: SMTPServerFactory, stage: str) -> None:
    server = smtp_server_factory(faults=Faults(delay={stage: 5.0}))
    started = time.monotonic()
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        send_plain(server, timeout=SHORT)
    assert time.monotonic() - started < 4.5  # the client's timeout, not the server's 5 s delay
    assert server.messages == []
    if stage == "data":  # the whole message arrived, the reply never left
        wait_until(lambda: server.dropped)


def test_short_delay_only_slows_down(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(delay={"data": 0.2}))
    started = time.monotonic()
    send_plain(server)
    assert time.monotonic() - started >= 0.2
    assert len(server.messages) == 1


def test_fail_times_counts_connections(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(reply={"connect": (421, "4.3.2 Busy")}, fail_times=2))
    for _ in range(2):
        with pytest.raises(smtplib.SMTPConnectError):
            smtp_client(server)
    send_plain(server)
    assert server.connections == 3
    assert len(server.messages) == 1


def test_fail_times_counts_transactions_not_probes(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(reply={"rcpt": (451, "4.2.1 Try later")}, fail_times=1))
    with smtp_client(server) as probe:  # never reaches RCPT: uses no budget
        assert probe.noop()[0] == 250
    with smtp_client(server) as smtp:
        smtp.ehlo()
        smtp.mail(SENDER)
        assert smtp.rcpt(RCPT)[0] == 451
        smtp.rset()
        smtp.sendmail(SENDER, [RCPT], MESSAGE)  # same connection, next transaction
    assert len(server.messages) == 1


def test_fail_times_with_disconnect(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(faults=Faults(disconnect_at="after_data", fail_times=1))
    with pytest.raises(smtplib.SMTPServerDisconnected):
        send_plain(server)
    send_plain(server)
    assert len(server.messages) == 1
    wait_until(lambda: server.dropped)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reply": {"bogus": (500, "x")}},
        {"delay": {"after_data": 1.0}},
        {"disconnect_at": "quit"},
        {"reply": {"mail": (99, "x")}},
        {"delay": {"mail": -1.0}},
        {"fail_times": -1},
    ],
)
def test_faults_are_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="Faults"):
        Faults(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# SIZE and SMTPUTF8
# --------------------------------------------------------------------------------------


def test_size_limit(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(size_limit=1000)
    big = MESSAGE + (b"x" * 70 + b"\r\n") * 20
    with smtp_client(server) as smtp:
        smtp.ehlo()
        assert smtp.esmtp_features["size"] == "1000"
        smtp.sendmail(SENDER, [RCPT], MESSAGE)
        # smtplib announces SIZE=, so MAIL is refused up front ...
        with pytest.raises(smtplib.SMTPSenderRefused) as excinfo:
            smtp.sendmail(SENDER, [RCPT], big)
        assert excinfo.value.smtp_code == 552
        # ... and without SIZE= the message is refused after DATA.
        smtp.rset()
        smtp.mail(SENDER)
        smtp.rcpt(RCPT)
        assert smtp.data(big)[0] == 552
    [received] = server.messages
    assert f"SIZE={len(MESSAGE)}" in received.mail_options


def test_smtputf8_advertised(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory()
    sender = "pelé@exämple.com"
    message = "Subject: ünïcode\r\n\r\nGrüße\r\n".encode()
    with smtp_client(server) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("smtputf8")
        smtp.sendmail(sender, ["用户@例子.广告"], message, mail_options=["SMTPUTF8"])
    [received] = server.messages
    assert received.smtputf8 is True
    assert received.mail_from == sender
    assert received.rcpt_tos == ["用户@例子.广告"]
    assert "SMTPUTF8" in received.mail_options
    assert received.content == message


def test_smtputf8_not_advertised(smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(smtputf8=False)
    with smtp_client(server) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("smtputf8")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            smtp.sendmail("pelé@exämple.com", [RCPT], MESSAGE, mail_options=["SMTPUTF8"])
        assert smtp.docmd("MAIL", f"FROM:<{SENDER}> SMTPUTF8")[0] == 501
    assert server.messages == []


# --------------------------------------------------------------------------------------
# RawLineServer
# --------------------------------------------------------------------------------------


def test_raw_script_speaks_then_hangs_up() -> None:
    with RawLineServer() as raw, smtp_client(raw) as smtp:
        assert smtp.ehlo()[0] == 250
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.mail(SENDER)
    assert raw.received == [b"ehlo client.test\r\n"]
    assert raw.connections == 1


def test_raw_implicit_tls_against_plain_port(tls_files: TLSFiles) -> None:
    with RawLineServer() as raw:
        with pytest.raises(ssl.SSLError):
            smtp_ssl_client(raw, tls_files.client_context())
        wait_until(lambda: raw.received)
    assert raw.received[0][:1] == b"\x16"  # a TLS handshake record hit the plain server


def test_raw_tls_only(tls_files: TLSFiles) -> None:
    with RawLineServer("tls_only", tls_files=tls_files) as raw:
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
            smtp_client(raw, timeout=SHORT)  # plain client waits for a greeting forever
        with smtp_ssl_client(raw, tls_files.client_context()) as smtp:
            assert smtp.ehlo()[0] == 250


def test_raw_silent() -> None:
    with RawLineServer("silent") as raw:
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
            smtp_client(raw, timeout=SHORT)
        assert raw.connections == 1


def test_raw_close() -> None:
    with RawLineServer("close") as raw, pytest.raises(smtplib.SMTPServerDisconnected):
        smtp_client(raw)


def test_raw_hang_after_script() -> None:
    with RawLineServer(script=["220 hi"], after_script="hang") as raw:
        with (
            smtp_client(raw, timeout=SHORT) as smtp,
            pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"),
        ):
            smtp.ehlo()
        wait_until(lambda: raw.received)
    assert raw.received[0] == b"ehlo client.test\r\n"
