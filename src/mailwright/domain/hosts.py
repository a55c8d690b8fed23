"""Host names as users type them: names, IDN, IPv4 and IPv6 literals."""

from __future__ import annotations

import ipaddress
import re

import idna

from mailwright.errors import ValidationError

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def ascii_host(host: str, *, field: str = "server") -> str:
    """The host in the form sockets and certificates use: A-labels, or a bare IP."""
    text = host.strip().rstrip(".")
    if not text:
        raise ValidationError("the server name is empty", field=field)
    literal = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(literal))
    except ValueError:
        pass
    if any(c in text for c in " /:@\\\r\n\t"):
        raise ValidationError(
            f"{text!r} is not a host name: give only the name or IP address, without "
            "scheme, port or path (for example smtp.gmail.com)",
            field=field,
        )
    try:
        encoded = idna.encode(text, uts46=True).decode() if not text.isascii() else text.lower()
    except idna.IDNAError as exc:
        raise ValidationError(f"{text!r} is not a valid host name: {exc}", field=field) from exc
    if len(encoded) > 253 or not all(_LABEL.match(label) for label in encoded.split(".")):
        raise ValidationError(f"{text!r} is not a valid host name", field=field)
    return encoded
