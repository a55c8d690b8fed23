"""Hostile servers on 127.0.0.1 for the security probes, each in its own thread and loop.

``EchoSMTPServer`` speaks just enough SMTP to take a login and then betray it: its
refusals echo the AUTH line (and any text the test asks for), as some real servers
do in their logs and replies. It can offer or withhold STARTTLS, speak implicit TLS,
accept the login and echo it at RCPT instead, and it records every AUTH line it
received and whether TLS was up at the time.

``BannerServer`` answers every connection with a fixed foreign banner (an HTTP
answer, a metadata service) and closes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypeVar

TIMEOUT = 10.0
T = TypeVar("T")


@dataclass(slots=True)
class AuthLine:
    text: str
    over_tls: bool


@dataclass
class _Loop:
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="hostile-server")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def stop(self, server: asyncio.Server | None) -> None:
        """Stop listening, end every connection's task, then the loop and its thread."""
        try:
            self.run(_shutdown(server))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self.thread is not None:
                self.thread.join(TIMEOUT)
            if not self.loop.is_running():
                self.loop.close()


async def _shutdown(server: asyncio.Server | None) -> None:
    if server is not None:
        server.close()
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _Listener:
    """A server on a free loopback port, served by its own event loop in a thread.

    Subclasses answer each connection in `_client`; `implicit_tls` wraps every
    connection in TLS from its first byte.
    """

    def __init__(self, *, implicit_tls: ssl.SSLContext | None = None) -> None:
        self.port = 0
        self._implicit_tls = implicit_tls
        self._loop = _Loop()
        self._server: asyncio.Server | None = None

    def start(self) -> Self:
        self._loop.start()
        self._server = self._loop.run(
            asyncio.start_server(self._client, "127.0.0.1", 0, ssl=self._implicit_tls)
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        self._loop.stop(self._server)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class EchoSMTPServer(_Listener):
    def __init__(
        self,
        *,
        tls: Literal["ssl", "starttls", "none"] = "ssl",
        server_context: ssl.SSLContext | None = None,
        mechanisms: str = "PLAIN LOGIN XOAUTH2",
        auth: Literal["refuse", "defer", "accept"] = "refuse",
        echo_at_rcpt: bool = False,
        extra_echo: str = "",
    ) -> None:
        self.tls = tls
        self.server_context = server_context
        self.mechanisms = mechanisms
        self.auth = auth
        self.echo_at_rcpt = echo_at_rcpt
        self.extra_echo = extra_echo
        self.auth_lines: list[AuthLine] = []
        super().__init__(implicit_tls=server_context if tls == "ssl" else None)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        over_tls = self.tls == "ssl"
        echoed = ""
        accepted = 0

        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        async def read() -> str:
            return (await reader.readline()).decode("utf-8", "replace").rstrip("\r\n")

        try:
            await say("220 echo.test ESMTP ready")
            while line := await read():
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    offers = ["250-echo.test", "250-PIPELINING", "250-8BITMIME"]
                    if self.tls == "starttls" and not over_tls:
                        offers.append("250-STARTTLS")
                    offers.append(f"250 AUTH {self.mechanisms}")
                    await say("\r\n".join(offers))
                elif verb == "STARTTLS" and self.tls == "starttls" and self.server_context:
                    await say("220 go ahead")
                    await writer.start_tls(self.server_context)
                    over_tls = True
                elif verb == "AUTH":
                    parts = line.split()
                    got = line
                    if len(parts) >= 2 and parts[1].upper() == "LOGIN":
                        if len(parts) >= 3:  # the username as the initial response
                            user = parts[2]
                        else:
                            await say("334 VXNlcm5hbWU6")
                            user = await read()
                        await say("334 UGFzc3dvcmQ6")
                        password = await read()
                        got = f"AUTH LOGIN {user} {password}"
                        with contextlib.suppress(ValueError):
                            got += " (" + base64.b64decode(password).decode() + ")"
                    self.auth_lines.append(AuthLine(got, over_tls))
                    echoed = f"{got} {self.extra_echo}".strip()
                    if self.auth == "refuse":
                        await say(f"535 5.7.8 Authentication credentials invalid: {echoed}")
                    elif self.auth == "defer":
                        await say(f"454 4.7.0 Temporary authentication failure: {echoed}")
                    else:
                        await say("235 2.7.0 Authentication successful")
                elif verb == "MAIL":
                    accepted = 0
                    await say("250 2.1.0 OK")
                elif verb == "RCPT":
                    if self.echo_at_rcpt:
                        await say(f"550 5.7.1 Relaying denied for the login {echoed}")
                    else:
                        accepted += 1
                        await say("250 2.1.5 OK")
                elif verb == "DATA" and not accepted:
                    await say("554 5.5.1 no valid recipients")
                elif verb == "DATA":
                    await say("354 go ahead")
                    while (body := await reader.readline()) and body.rstrip(b"\r\n") != b".":
                        pass
                    await say("250 2.0.0 queued")
                elif verb == "RSET" or verb == "NOOP":
                    await say("250 2.0.0 OK")
                elif verb == "QUIT":
                    await say("221 2.0.0 bye")
                    break
                else:
                    await say("502 5.5.2 command not recognized")
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a cancelled handler ends quietly (Python 3.11 streams log a cancelled task)
        finally:
            writer.close()


class BannerServer(_Listener):
    """Every connection gets ``banner`` and then the server waits for the client to leave."""

    def __init__(self, banner: bytes) -> None:
        self.banner = banner
        super().__init__()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.banner)
            await writer.drain()
            await asyncio.wait_for(reader.read(65536), timeout=TIMEOUT)
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass  # a cancelled handler ends quietly (Python 3.11 streams log a cancelled task)
        finally:
            writer.close()


class EchoMailboxServer(_Listener):
    """An IMAP or POP3 server (implicit TLS) whose login refusal echoes what the client sent."""

    def __init__(self, *, protocol: Literal["imap", "pop3"], server_context: ssl.SSLContext) -> None:
        self.protocol = protocol
        self.server_context = server_context
        self.received: list[str] = []
        super().__init__(implicit_tls=server_context)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def say(text: str) -> None:
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        async def read() -> str:
            return (await reader.readline()).decode("utf-8", "replace").rstrip("\r\n")

        def decoded(token: str) -> str:
            with contextlib.suppress(ValueError):
                return base64.b64decode(token).decode().replace("\0", " ")
            return ""

        try:
            if self.protocol == "imap":
                await say("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] echo ready")
            else:
                await say("+OK echo ready")
            while line := await read():
                self.received.append(line)
                if self.protocol == "imap":
                    tag, _, command = line.partition(" ")
                    verb = command.split(" ", 1)[0].upper()
                    if verb == "CAPABILITY":
                        await say(f"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done")
                    elif verb == "AUTHENTICATE":
                        await say("+ ")
                        token = await read()
                        await say(f"{tag} NO [AUTHENTICATIONFAILED] Invalid: {token} ({decoded(token)})")
                    elif verb == "LOGIN":
                        await say(f"{tag} NO [AUTHENTICATIONFAILED] Invalid: {command}")
                    elif verb == "LOGOUT":
                        await say(f"* BYE\r\n{tag} OK bye")
                        break
                    else:
                        await say(f"{tag} BAD unknown")
                else:
                    verb = line.split(" ", 1)[0].upper()
                    if verb == "CAPA":
                        await say("+OK\r\nUSER\r\nSASL PLAIN\r\n.")
                    elif verb == "AUTH":
                        await say("+ ")
                        token = await read()
                        await say(f"-ERR [AUTH] Invalid: {token} ({decoded(token)})")
                    elif verb == "QUIT":
                        await say("+OK bye")
                        break
                    else:
                        await say("-ERR unknown")
        except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass  # a cancelled handler ends quietly (Python 3.11 streams log a cancelled task)
        finally:
            writer.close()
