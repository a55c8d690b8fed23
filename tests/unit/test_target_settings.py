from __future__ import annotations

from pathlib import Path

import pytest

from mailwright.domain.hosts import ascii_host
from mailwright.domain.smtp import Security
from mailwright.errors import ValidationError
from mailwright.plugins import target_type
from mailwright.targets.smtp import settings_from_input


def test_security_defaults_follow_the_port() -> None:
    assert settings_from_input({"server": "smtp.example.org", "port": 465}).security is Security.SSL
    assert settings_from_input({"server": "smtp.example.org", "port": 587}).security is Security.STARTTLS
    port25 = settings_from_input({"server": "smtp.example.org", "port": 25})
    assert port25.security is Security.STARTTLS
    assert not port25.starttls_required  # upgrade when offered


@pytest.mark.parametrize(
    ("port", "security", "words"),
    [
        (465, "starttls", r"port 465 expects implicit TLS \(ssl\); this target is set to starttls"),
        (465, "none", "port 465 expects implicit TLS"),
        (587, "ssl", "port 587 speaks plain SMTP first"),
        (25, "ssl", "port 25 speaks plain SMTP first"),
    ],
)
def test_impossible_port_and_security_refused(port: int, security: str, words: str) -> None:
    with pytest.raises(ValidationError, match=words) as info:
        settings_from_input({"server": "smtp.example.org", "port": port, "security": security})
    assert info.value.field == "security"
    assert info.value.hint


def test_unusual_ports_accept_any_mode() -> None:
    for mode in ("ssl", "starttls", "none"):
        assert settings_from_input({"server": "h.example", "port": 2525, "security": mode}).security == mode


@pytest.mark.parametrize("port", [0, -1, 65536, 70000])
def test_port_out_of_range(port: int) -> None:
    with pytest.raises(ValidationError, match="port"):
        settings_from_input({"server": "smtp.example.org", "port": port})


def test_gmail_preset_and_its_alternative_port() -> None:
    gmail = target_type("smtp").preset("gmail")
    s465 = settings_from_input({}, preset=gmail)
    assert (s465.server, s465.port, s465.security) == ("smtp.gmail.com", 465, Security.SSL)
    s587 = settings_from_input({"port": 587}, preset=gmail)
    assert (s587.port, s587.security) == (587, Security.STARTTLS)
    assert "app password" in gmail.note
    assert gmail.help_url.startswith("https://support.google.com/")


def test_all_presets_present() -> None:
    assert set(target_type("smtp").presets) >= {"gmail", "outlook", "yahoo", "icloud", "fastmail", "zoho"}
    with pytest.raises(ValidationError, match="unknown preset"):
        target_type("smtp").preset("hotmale")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("smtp.example.org", "smtp.example.org"),
        ("SMTP.Example.ORG.", "smtp.example.org"),
        ("mäil.example", "xn--mil-qla.example"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
    ],
)
def test_hosts(text: str, expected: str) -> None:
    assert ascii_host(text) == expected


@pytest.mark.parametrize("text", ["", "smtp://x.org", "x.org:25", "bad host", "-x.org", "a" * 64 + ".org"])
def test_bad_hosts(text: str) -> None:
    with pytest.raises(ValidationError):
        ascii_host(text)


def test_ca_file_must_hold_a_certificate(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ValidationError, match="no PEM certificate"):
        settings_from_input({"server": "h.example", "port": 465, "ca_file": str(bad)})
    with pytest.raises(ValidationError, match="cannot read"):
        settings_from_input({"server": "h.example", "port": 465, "ca_file": str(tmp_path / "missing.pem")})


def test_ca_file_and_disabled_validation_contradict(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    assert settings_from_input({"server": "h.example", "port": 465, "ca_file": str(path)}).ca_file
    with pytest.raises(ValidationError, match="contradict"):
        settings_from_input(
            {"server": "h.example", "port": 465, "ca_file": str(path), "disable_certificate_validation": True}
        )
