"""Opening TCP connections to targets, within the outbound policy.

A target's host is resolved here, every address it resolves to is checked against
the policy (MAILWRIGHT_TARGET_DENY, MAILWRIGHT_TARGET_ALLOW), and the socket is
connected to one of those same addresses, so a name cannot be checked as one
address and reached as another. A name that resolves to a denied address is
refused, with the rule that refused it and how to change it.

The policy is the process's: `Services` installs it from the settings at start
(`set_outbound_policy`); until then the default applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from typing import Any

from mailwright.domain.hosts import DEFAULT_POLICY, OutboundPolicy
from mailwright.errors import TargetError

_policy: OutboundPolicy = DEFAULT_POLICY


def set_outbound_policy(policy: OutboundPolicy) -> None:
    global _policy
    _policy = policy


def outbound_policy() -> OutboundPolicy:
    return _policy


class TargetPolicyError(TargetError):
    """The outbound policy refuses the address a target resolves to; not retried."""

    code = "target_refused_by_policy"


AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]


def _checked(host: str, infos: Sequence[AddrInfo], *, target: str | None) -> Sequence[AddrInfo]:
    policy = outbound_policy()
    for info in infos:
        address = str(info[4][0]).partition("%")[0]  # drop an IPv6 zone index
        rule = policy.refusing_rule(address)
        if rule is not None:
            message, hint = policy.explain(host, address, rule)
            error = TargetPolicyError(message, target=target, hint=hint)
            error.stage = "connect"
            raise error
    return infos


async def open_socket(host: str, port: int, *, timeout: float, target: str | None) -> socket.socket:
    """A connected non-blocking socket to `host`, whose every address the policy allows."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        last: OSError | None = None
        for family, kind, proto, _, sockaddr in _checked(host, infos, target=target):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, sockaddr)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
    raise last or OSError(f"{host} resolves to no address")


def open_socket_blocking(host: str, port: int, *, timeout: float, target: str | None) -> socket.socket:
    """As `open_socket`, for the IMAP and POP3 clients' worker threads (a blocking socket)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in _checked(host, infos, target=target):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
        except OSError as exc:
            with contextlib.suppress(OSError):
                sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last or OSError(f"{host} resolves to no address")


__all__ = [
    "TargetPolicyError",
    "open_socket",
    "open_socket_blocking",
    "outbound_policy",
    "set_outbound_policy",
]
