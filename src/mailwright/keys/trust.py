"""Which CA an OAuth2 key trusts for its login endpoints: the system store, or a PEM file."""

from __future__ import annotations

import ssl
from typing import Any


def checked_ca_file(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    from mailwright.transport.tls import check_ca_file

    return check_ca_file(value)


def verify_for(settings: dict[str, Any]) -> ssl.SSLContext | bool:
    """What the token requests verify the endpoint's certificate with."""
    ca_file = settings.get("ca_file")
    if not ca_file:
        return True
    return ssl.create_default_context(cafile=str(ca_file))
