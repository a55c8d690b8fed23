"""Tests of the e2e mail stack itself, using only the standard library clients."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import ssl
import uuid

import pytest

from tests.support.mailstack import MailStack, make_message


@pytest.fixture
def mailbox(mailstack: MailStack) -> tuple[str, str]:
    """A fresh, empty mailbox: (address, password)."""
    password = f"pw-{uuid.uuid4().hex[:8]}"
    return mailstack.add_user(f"u{uuid.uuid4().hex[:10]}", password), password


def _crlf_to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def test_smtps_submission_is_delivered_to_imap_and_maildir(
    mailstack: MailStack, mailbox: tuple[str, str]
) -> None:
    address, password = mailbox
    original = make_message(mailstack.user_address, address, "over smtps", "Hello, implicit TLS.")
    with smtplib.SMTP_SSL(
        mailstack.host, mailstack.smtps_port, context=mailstack.ssl_context(), timeout=10
    ) as smtp:
        smtp.login(mailstack.user_address, mailstack.user_password)
        assert smtp.sendmail(mailstack.user_address, [address], original) == {}

    [fetched] = mailstack.wait_for_messages(address, password, 1)
    # Delivery only prepends trace headers (Return-Path, Delivered-To, Received).
    assert fetched.endswith(original)
    assert fetched.startswith(b"Return-Path: <" + mailstack.user_address.encode() + b">\r\n")
    assert b"\r\nDelivered-To: " + address.encode() + b"\r\n" in fetched
    [stored] = mailstack.maildir_messages(address)
    assert stored == _crlf_to_lf(fetched)


def test_starttls_submission_offers_auth_only_after_starttls(
    mailstack: MailStack, mailbox: tuple[str, str]
) -> None:
    address, password = mailbox
    with smtplib.SMTP(mailstack.host, mailstack.submission_port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")
        assert smtp.mail(mailstack.user_address)[0] == 530  # STARTTLS is required
        smtp.starttls(context=mailstack.ssl_context())
        smtp.ehlo()
        assert "PLAIN" in smtp.esmtp_features["auth"].upper().split()
        smtp.login(mailstack.user_address, mailstack.user_password)
        smtp.sendmail(mailstack.user_address, [address], make_message("a@b.test", address, "s", "x"))
    [fetched] = mailstack.wait_for_messages(address, password, 1)
    assert b"Subject: s\r\n" in fetched


def test_submission_requires_auth(mailstack: MailStack, mailbox: tuple[str, str]) -> None:
    address, _ = mailbox
    with (
        smtplib.SMTP_SSL(
            mailstack.host, mailstack.smtps_port, context=mailstack.ssl_context(), timeout=10
        ) as smtp,
        pytest.raises(smtplib.SMTPRecipientsRefused),
    ):
        smtp.sendmail("a@b.test", [address], b"Subject: x\r\n\r\nno auth\r\n")


def test_wrong_password_is_refused(mailstack: MailStack) -> None:
    with smtplib.SMTP_SSL(
        mailstack.host, mailstack.smtps_port, context=mailstack.ssl_context(), timeout=10
    ) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError) as excinfo:
            smtp.login(mailstack.user_address, "wrong-password")
        assert excinfo.value.smtp_code == 535
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        mailstack.fetch_messages(mailstack.user_address, "wrong-password")


def test_certificate_from_other_ca_is_not_trusted(mailstack: MailStack) -> None:
    untrusted = ssl.create_default_context(cafile=str(mailstack.other_ca_path))
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL(mailstack.host, mailstack.smtps_port, context=untrusted, timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(mailstack.host, mailstack.imaps_port, ssl_context=untrusted, timeout=10)


def test_certificate_matches_names_and_ip(mailstack: MailStack) -> None:
    context = mailstack.ssl_context()
    for name in ("localhost", "mail.test", "127.0.0.2"):
        with (
            socket.create_connection((mailstack.host, mailstack.imaps_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.recv(4).startswith(b"* OK")


def test_plain_port_accepts_local_domain_without_auth(mailstack: MailStack, mailbox: tuple[str, str]) -> None:
    address, password = mailbox
    with smtplib.SMTP(mailstack.host, mailstack.smtp_port, timeout=10) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        assert smtp.has_extn("starttls")
        smtp.sendmail("someone@elsewhere.invalid", [address], make_message("x@y.test", address, "p", "b"))
        with pytest.raises(smtplib.SMTPRecipientsRefused):  # no open relay
            smtp.sendmail("someone@elsewhere.invalid", ["victim@elsewhere.invalid"], b"\r\n")
    assert len(mailstack.wait_for_messages(address, password, 1)) == 1


def test_any_local_part_is_delivered(mailstack: MailStack) -> None:
    address = f"nobody-{uuid.uuid4().hex[:8]}@{mailstack.domain}"
    with smtplib.SMTP(mailstack.host, mailstack.smtp_port, timeout=10) as smtp:
        smtp.sendmail("x@y.test", [address], make_message("x@y.test", address, "any", "b"))
    [stored] = mailstack.wait_for_maildir(address, 1)
    assert b"\nSubject: any\n" in stored


def test_smtputf8_message_is_delivered(mailstack: MailStack, mailbox: tuple[str, str]) -> None:
    address, password = mailbox
    sender = "jörg@example.test"
    original = make_message(f"Jörg <{sender}>", address, "Grüße ✓", "Unicode bödy ✓")
    with smtplib.SMTP_SSL(
        mailstack.host, mailstack.smtps_port, context=mailstack.ssl_context(), timeout=10
    ) as smtp:
        smtp.login(mailstack.user_address, mailstack.user_password)
        smtp.sendmail(sender, [address], original, mail_options=["SMTPUTF8"])
    [fetched] = mailstack.wait_for_messages(address, password, 1)
    assert fetched.endswith(original)
    assert fetched.startswith(f"Return-Path: <{sender}>\r\n".encode())


def test_lmtp_delivery_size_limit_and_clean_stop() -> None:
    with MailStack(delivery="lmtp", message_size_limit=50_000) as stack:
        address = stack.address("lmtp")
        with smtplib.SMTP(stack.host, stack.smtp_port, timeout=10) as smtp:
            assert int(smtp.ehlo()[1].split(b"SIZE ")[1].split()[0]) == 50_000
            smtp.sendmail("x@y.test", [address], make_message("x@y.test", address, "lmtp", "b"))
            with pytest.raises(smtplib.SMTPSenderRefused) as excinfo:
                smtp.sendmail("x@y.test", [address], b"X: y\r\n\r\n" + b"z" * 60_000)
            assert excinfo.value.smtp_code == 552
        [stored] = stack.wait_for_maildir(address, 1)
        assert b"\tby mail.test with LMTP\n" in stored  # Dovecot's LMTP Received header
        port = stack.smtp_port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=5)


def test_ehlo_advertises_extensions(mailstack: MailStack) -> None:
    with smtplib.SMTP_SSL(
        mailstack.host, mailstack.smtps_port, context=mailstack.ssl_context(), timeout=10
    ) as smtp:
        smtp.ehlo()
        for ext in ("pipelining", "8bitmime", "smtputf8", "auth"):
            assert smtp.has_extn(ext), ext
        assert int(smtp.esmtp_features["size"]) == mailstack.message_size_limit


def test_imap_plaintext_login_needs_starttls(mailstack: MailStack) -> None:
    with imaplib.IMAP4(mailstack.host, mailstack.imap_port, timeout=10) as imap:
        assert "LOGINDISABLED" in imap.capabilities
        imap.starttls(ssl_context=mailstack.ssl_context())
        assert imap.login(mailstack.user_address, mailstack.user_password)[0] == "OK"


def test_pop3_over_tls_lists_message(mailstack: MailStack, mailbox: tuple[str, str]) -> None:
    address, password = mailbox
    original = make_message("x@y.test", address, "pop3", "via POP3")
    with smtplib.SMTP(mailstack.host, mailstack.smtp_port, timeout=10) as smtp:
        smtp.sendmail("x@y.test", [address], original)
    mailstack.wait_for_maildir(address, 1)

    pop = poplib.POP3_SSL(mailstack.host, mailstack.pop3s_port, context=mailstack.ssl_context())
    try:
        pop.user(address)
        pop.pass_(password)
        assert pop.stat()[0] == 1
        assert len(pop.list()[1]) == 1
        _, lines, _ = pop.retr(1)
        assert b"\r\n".join(lines).endswith(original.rstrip(b"\r\n"))
    finally:
        pop.quit()


def test_add_user_after_start_can_log_in(mailstack: MailStack) -> None:
    address = mailstack.add_user("late-user", "s3cret")
    assert address == f"late-user@{mailstack.domain}"
    assert mailstack.fetch_messages(address, "s3cret") == []
