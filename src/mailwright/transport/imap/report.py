"""The IMAP connection test: connect, TLS, CAPABILITY, login, LOGOUT, reported."""

from __future__ import annotations

from typing import Any

from mailwright.transport.base import Login
from mailwright.transport.imap.client import IMAPConnection, IMAPEndpoint


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


__all__ = ["connection_report", "imap_capabilities"]
