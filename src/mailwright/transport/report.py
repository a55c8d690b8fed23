"""The connection test's report, built the same way for SMTP, IMAP and POP3.

A probe opens a connection (connect, TLS, greeting, capabilities, login) and closes
it; the report says how each stage went, what the server offers, how TLS came out,
what to watch for, and the error with its fix. The target types turn this
dictionary into their `ConnectionTestReport`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from mailwright.errors import TargetError
from mailwright.transport.base import Endpoint, Login, ProtocolInfo, ms

if TYPE_CHECKING:
    from mailwright.transport.tls import TLSState


class Probed(Protocol):
    """A protocol's connection, as far as a report reads it."""

    @property
    def endpoint(self) -> Endpoint: ...
    @property
    def timings(self) -> dict[str, float]: ...
    @property
    def greeting(self) -> str: ...
    @property
    def tls(self) -> TLSState | None: ...
    @property
    def authenticated_as(self) -> str | None: ...
    @property
    def auth_mechanism(self) -> str | None: ...

    async def open(self, login: Login | None) -> None: ...
    async def close(self) -> None: ...


async def probe(connection: Probed, login: Login | None) -> tuple[TargetError | None, float]:
    """Open and close once, for a report: the error (if any) and the total time in ms."""
    started = time.perf_counter()
    error: TargetError | None = None
    try:
        await connection.open(login)
    except TargetError as exc:
        error = exc
    finally:
        await connection.close()
    return error, ms(started)


def build_report(
    connection: Probed,
    *,
    protocol: ProtocolInfo,
    step_order: tuple[str, ...],
    login: Login | None,
    error: TargetError | None,
    capabilities: dict[str, Any],
    warnings: list[str],
    total_ms: float,
) -> dict[str, Any]:
    """ok, steps [{name, ok, ms}] in `step_order`, greeting, capabilities (only once the
    server greeted), tls, authenticated_as, warnings, error (with its hint) and total_ms."""
    ep = connection.endpoint
    failed = _failed_stages(error)
    tls = connection.tls
    timings = connection.timings
    return {
        "ok": error is None,
        "target": ep.target_name,
        "server": ep.host,
        "port": ep.port,
        "security": ep.security.value,
        "protocol": protocol.name,
        "account_key": login.key_name if login else None,
        "steps": [
            {"name": name, "ok": name not in failed, "ms": timings[name]}
            for name in step_order
            if name in timings
        ],
        "greeting": connection.greeting,
        "capabilities": capabilities if connection.greeting else {},
        "tls": tls.as_dict() if tls is not None else None,
        "authenticated_as": connection.authenticated_as,
        "auth_mechanism": connection.auth_mechanism,
        "warnings": warnings,
        "error": error.details() if error is not None else None,
        "total_ms": total_ms,
    }


def _failed_stages(error: TargetError | None) -> set[str | None]:
    """The stage the error was raised at, and those of the errors it was raised while handling:
    a refresh that fails after the server refused the token fails the login too."""
    failed: set[str | None] = set()
    seen: BaseException | None = error
    while isinstance(seen, TargetError) and len(failed) < 8:
        failed.add(seen.stage)
        seen = seen.__cause__ or seen.__context__
    return failed


__all__ = ["Probed", "build_report", "probe"]
