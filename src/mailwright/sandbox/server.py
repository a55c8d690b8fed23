"""The sandbox SMTP server: accepts any message on loopback and keeps it in a store.

It runs aiosmtpd on its own asyncio loop in a daemon thread, so it works beside
uvicorn, a CLI command or a test alike.  aiosmtpd's ``Controller`` is not used: it
cannot bind port 0 (its start-up self-test connects to the requested port).

Each message is written to the store before the 250 reply, and the reply names the
id it was stored under.  There is no TLS and no AUTH: the server is meant for
loopback only and refuses another address unless ``allow_remote=True``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailwright.errors import ConfigError, MailwrightError, SandboxMessageTooLargeError
from mailwright.sandbox.store import SandboxStore

__all__ = ["DEFAULT_SANDBOX_PORT", "SandboxServer"]

log = logging.getLogger(__name__)

DEFAULT_SANDBOX_PORT = 2525
SERVER_NAME = "mailwright-sandbox.localhost"
SERVER_IDENT = "Mailwright sandbox ESMTP (captures mail, delivers nothing)"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
IDLE_TIMEOUT = 300.0  # seconds a client may stay silent
DRAIN_TIMEOUT = 5.0  # seconds stop() waits for messages being written

_T = TypeVar("_T")


class SandboxServer:
    """Capture SMTP server on ``host``:``port`` (``port=0`` picks a free port).

    ``start()`` binds and serves; afterwards ``port`` is the bound port.  ``stop()``
    closes the listener and every open connection (idempotent).  Also a context
    manager.
    """

    def __init__(
        self,
        store: SandboxStore,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_SANDBOX_PORT,
        allow_remote: bool = False,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(
                f"the sandbox port must be between 0 and 65535, not {port}",
                hint="choose another with --sandbox-port",
            )
        self.store = store
        self.host = host
        self.port = port
        self.allow_remote = allow_remote
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._live: set[_SandboxSMTP] = set()
        self._handler: _CaptureHandler | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SandboxServer {self.host}:{self.port} {state}>"

    # ---- start and stop ----

    def start(self) -> Self:
        """Bind and serve in a background thread; ``ConfigError`` explains what went wrong."""
        if self._thread is not None:
            raise RuntimeError(f"{self!r} is already running")
        if not self.allow_remote:
            _require_loopback(self.host)
        self.store.ensure_directory()
        sock = _bind(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=_run_forever, args=(loop,), name=f"sandbox-smtp:{self.port}", daemon=True
        )
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._server = self._call(self._serve(sock), START_TIMEOUT)
        except BaseException:
            sock.close()
            self._close_loop()
            raise
        log.info("sandbox SMTP server on %s:%d, storing in %s", self.host, self.port, self.store.directory)
        return self

    def stop(self) -> None:
        """Stop listening, drop open connections and join the thread."""
        if self._thread is None:
            return
        try:
            self._call(self._shutdown(), STOP_TIMEOUT)
        finally:
            self._close_loop()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- on the server's loop ----

    async def _serve(self, sock: socket.socket) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        handler = self._handler = _CaptureHandler(self.store)

        def factory() -> _SandboxSMTP:
            return _SandboxSMTP(
                self,
                handler,
                loop=loop,
                hostname=SERVER_NAME,
                ident=SERVER_IDENT,
                data_size_limit=self.store.max_bytes,
                enable_SMTPUTF8=True,
                decode_data=False,  # also makes aiosmtpd offer 8BITMIME
                timeout=IDLE_TIMEOUT,
                auth_exclude_mechanism=["LOGIN", "PLAIN"],
            )

        return await loop.create_server(factory, sock=sock)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._finish_writes()
        for smtp in list(self._live):
            transport = smtp.transport
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
        for _ in range(3):  # let connection_lost() callbacks run
            await asyncio.sleep(0)
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _finish_writes(self) -> None:
        """Wait (a little) for messages being stored, so that they get their 250 reply."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        while self._handler is not None and self._handler.writing and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for _ in range(3):  # let aiosmtpd push the replies
            await asyncio.sleep(0)

    # ---- plumbing ----

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _close_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT)
        if not thread.is_alive():
            loop.close()

    def _register(self, smtp: _SandboxSMTP) -> None:
        self._live.add(smtp)

    def _unregister(self, smtp: _SandboxSMTP) -> None:
        self._live.discard(smtp)


class _SandboxSMTP(SMTP):
    """aiosmtpd's protocol, with connections tracked so ``stop()`` can drop them."""

    def __init__(self, owner: SandboxServer, handler: _CaptureHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.owner._register(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.owner._unregister(self)
        super().connection_lost(error)


class _CaptureHandler:
    """aiosmtpd handler: every sender and recipient is accepted; DATA is stored."""

    def __init__(self, store: SandboxStore) -> None:
        self.store = store
        self.writing = 0  # messages being written now (read on the server's loop only)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        self.writing += 1
        try:
            summary = await asyncio.to_thread(
                self.store.add,
                _reverse_path(envelope.mail_from),
                list(envelope.rcpt_tos),
                data,
                _format_peer(session.peer),
            )
        except SandboxMessageTooLargeError as exc:
            return f"552 5.3.4 Message too big for the sandbox ({exc.size} > {exc.limit} bytes)"
        except (OSError, MailwrightError) as exc:
            log.error("sandbox could not store a message: %s", exc)
            return "451 4.3.0 The sandbox could not store the message (disk full?); try again later"
        finally:
            self.writing -= 1
        return f"250 2.0.0 Ok: captured as {summary.id}"


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()


def _reverse_path(mail_from: str | None) -> str:
    """The envelope sender; ``""`` for the null sender (``MAIL FROM:<>``)."""
    return "" if mail_from in (None, "<>") else str(mail_from)


def _format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(peer)


def _require_loopback(host: str) -> None:
    """``ConfigError`` unless every address of ``host`` is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        addresses = {str(info[4][0]) for info in infos}
        loopback = bool(addresses) and all(
            ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses
        )
    except (OSError, ValueError):
        loopback = False
    if not loopback:
        raise ConfigError(
            f"refusing to run the sandbox SMTP server on {host or 'all addresses'}: "
            "it accepts mail from anyone without a password, so it listens on loopback only",
            hint="use 127.0.0.1 (the default) or ::1; allow other machines only on a trusted network",
        )


def _bind(host: str, port: int) -> socket.socket:
    """A bound TCP socket for the first address of ``host``, or a ``ConfigError``."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as exc:
        raise ConfigError(
            f"cannot resolve the sandbox address {host!r}: {exc}",
            hint="use 127.0.0.1 (the default)",
        ) from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise _bind_error(host, port, exc) from exc
    return sock


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"port {port} is in use: choose another with --sandbox-port "
            "or turn the sandbox off with --no-sandbox"
        )
    if exc.errno == errno.EACCES:
        return ConfigError(
            f"no permission to listen on port {port}: ports below 1024 need root",
            hint="choose a port of 1024 or more with --sandbox-port (the default is 2525)",
        )
    return ConfigError(
        f"cannot listen on {host} port {port}: {exc.strerror or exc}",
        hint="choose another address or port, or turn the sandbox off with --no-sandbox",
    )
