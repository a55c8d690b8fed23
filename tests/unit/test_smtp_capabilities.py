from __future__ import annotations

from mailwright.domain.smtp import Security, default_security, parse_ehlo


def test_parse_full_ehlo() -> None:
    caps = parse_ehlo(
        "250 mail.example.org Hello\nPIPELINING\nSIZE 10240000\nSTARTTLS\nAUTH PLAIN LOGIN\n"
        "AUTH=LOGIN CRAM-MD5\nENHANCEDSTATUSCODES\n8BITMIME\nSMTPUTF8\nCHUNKING\nDSN"
    )
    assert caps.starttls and caps.pipelining and caps.smtputf8 and caps.eightbitmime
    assert caps.chunking and caps.dsn
    assert caps.size == 10240000
    assert caps.auth == ("PLAIN", "LOGIN", "CRAM-MD5")


def test_parse_minimal_ehlo() -> None:
    caps = parse_ehlo("250 host")
    assert not caps.starttls and caps.auth == () and caps.size is None
    assert caps.as_dict()["8bitmime"] is False


def test_size_zero_means_no_limit() -> None:
    assert parse_ehlo("250 host\nSIZE 0").size is None
    assert parse_ehlo("250 host\nSIZE").size is None


def test_default_security_by_port() -> None:
    assert default_security(465) is Security.SSL
    assert default_security(587) is Security.STARTTLS
    assert default_security(25) is Security.STARTTLS
    assert default_security(2525) is Security.STARTTLS
