"""Ports for the servers the tests start in another process or thread, which bind them later.

`bind(("127.0.0.1", 0))` hands out a port from the kernel's ephemeral range, the same range every
outgoing connection takes its local port from. Between choosing such a port and the server
binding it, one of the suite's many client connections may take it: CI once saw RabbitMQ refuse
to start because its distribution port had become the local end of someone's SMTP connection.
Ports below the ephemeral range are never given to outgoing connections, so a port chosen there
stays free unless another server takes it on purpose; and a port that both binds and has no
listener right now is checked before it is handed out.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

_LOWEST = 20000
_FALLBACK_EPHEMERAL_START = 32768
_random = random.SystemRandom()


def _ephemeral_start() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    return _FALLBACK_EPHEMERAL_START


def _binds(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that nothing holds now and that no outgoing connection will take."""
    top = _ephemeral_start() - 1
    if top <= _LOWEST:  # an unusual machine: fall back to what the kernel hands out
        with socket.socket() as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])
    for _ in range(200):
        port = _random.randint(_LOWEST, top)
        if _binds(host, port):
            return port
    raise RuntimeError(f"no free port between {_LOWEST} and {top} on {host}")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports (see `free_port`)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports
