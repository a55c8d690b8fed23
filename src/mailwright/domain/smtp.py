"""SMTP vocabulary: security modes and the capabilities a server announces in EHLO."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Security(StrEnum):
    SSL = "ssl"  # implicit TLS: TLS from the first byte (port 465)
    STARTTLS = "starttls"  # plain greeting, then STARTTLS (ports 587, 25)
    NONE = "none"  # no TLS at all


# What each well-known port speaks, for defaults and for diagnoses.
PORT_SECURITY: dict[int, Security] = {
    465: Security.SSL,
    587: Security.STARTTLS,
    25: Security.STARTTLS,
}


def default_security(port: int) -> Security:
    return PORT_SECURITY.get(port, Security.STARTTLS)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an EHLO reply says the server can do."""

    starttls: bool = False
    auth: tuple[str, ...] = ()
    size: int | None = None
    smtputf8: bool = False
    pipelining: bool = False
    eightbitmime: bool = False
    chunking: bool = False
    dsn: bool = False
    extensions: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "starttls": self.starttls,
            "auth": list(self.auth),
            "size": self.size,
            "smtputf8": self.smtputf8,
            "pipelining": self.pipelining,
            "8bitmime": self.eightbitmime,
            "chunking": self.chunking,
            "dsn": self.dsn,
        }


def parse_ehlo(reply: str) -> Capabilities:
    """Capabilities from the text of a 250 EHLO reply (first line is the greeting)."""
    extensions: dict[str, str] = {}
    for line in reply.splitlines()[1:]:
        keyword, _, params = line.strip().partition(" ")
        if not keyword:
            continue
        key = keyword.upper()
        # Old servers announce "AUTH=LOGIN PLAIN" as well as "AUTH LOGIN PLAIN".
        if key.startswith("AUTH="):
            key, params = "AUTH", key[5:] + (" " + params if params else "")
        if key in extensions and key == "AUTH":
            extensions[key] = f"{extensions[key]} {params}".strip()
        else:
            extensions[key] = params.strip()
    size_text = extensions.get("SIZE", "")
    size = int(size_text) if size_text.isdigit() and int(size_text) > 0 else None
    mechanisms = tuple(dict.fromkeys(m.upper() for m in extensions.get("AUTH", "").split()))
    return Capabilities(
        starttls="STARTTLS" in extensions,
        auth=mechanisms,
        size=size,
        smtputf8="SMTPUTF8" in extensions,
        pipelining="PIPELINING" in extensions,
        eightbitmime="8BITMIME" in extensions,
        chunking="CHUNKING" in extensions,
        dsn="DSN" in extensions,
        extensions=extensions,
    )
