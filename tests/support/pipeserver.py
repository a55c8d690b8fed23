"""A small recording SMTP server that offers PIPELINING, for tests of the pipelined transport.

It runs in the test's own event loop, answers every command found in one read
with one write (as a pipelining server does), and records what it saw: the
chunks each connection read (to prove that commands were batched), the commands,
and the messages accepted. Faults are counted over the whole server: drop the
connection at the n-th MAIL, reply 421 to the n-th MAIL, drop after the n-th
message's final dot (the message arrived, no reply), refuse recipients.
aiosmtpd is not used here because it cannot advertise PIPELINING.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

__all__ = ["PipeServer", "Stored"]


@dataclass
class Stored:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    connection: int


@dataclass
class _Options:
    pipelining: bool = True
    smtputf8: bool = False
    size: int | None = None
    refuse: dict[str, tuple[int, str]] = field(default_factory=dict)
    drop_at_mail: set[int] = field(default_factory=set)
    reply_421_at_mail: set[int] = field(default_factory=set)
    drop_after_dot: set[int] = field(default_factory=set)
    reply_delay: float = 0.0
    open_data_without_recipients: bool = False


class _Connection(asyncio.Protocol):
    def __init__(self, server: PipeServer, number: int) -> None:
        self.server = server
        self.number = number
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.in_data = False
        self.body: list[bytes] = []
        self.mail_from: str | None = None
        self.rcpts: list[str] = []
        self.reads: list[bytes] = []
        server.reads[number] = self.reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.live.add(self)
        transport.write(b"220 pipeserver ESMTP\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.live.discard(self)

    def data_received(self, data: bytes) -> None:
        self.reads.append(data)
        self.buffer += data
        out: list[bytes] = []
        while self.transport is not None and not self.transport.is_closing():
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0 and self.buffer.startswith(b".\r\n"):
                    end = -2
                if end < 0:
                    break
                chunk = self.buffer[: end + 2] if end >= 0 else b""
                self.buffer = self.buffer[end + 5 :]
                self.in_data = False
                reply = self._end_of_data(chunk)
                if reply is None:
                    self._drop(out)
                    return
                out.append(reply)
                continue
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                break
            line = self.buffer[:line_end].decode("utf-8", "replace")
            self.buffer = self.buffer[line_end + 2 :]
            reply = self._command(line)
            if reply is None:
                self._drop(out)
                return
            out.append(reply)
            if reply.startswith(b"421") or line.upper() == "QUIT":
                self._send(out)
                self.transport.close()
                return
        if out:
            self._send(out)

    def _drop(self, out: list[bytes]) -> None:
        # What was answered before the fault still goes out, then the connection dies.
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        if self.transport is not None:
            self.transport.abort()

    def _send(self, out: list[bytes]) -> None:
        payload = b"".join(out)
        delay = self.server.options.reply_delay
        if delay and self.transport is not None:
            asyncio.get_running_loop().call_later(delay, self._write_later, payload)
        elif self.transport is not None:
            self.transport.write(payload)

    def _write_later(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload)

    def _command(self, line: str) -> bytes | None:
        server = self.server
        options = server.options
        verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
        server.commands.append((self.number, line))
        if verb == "EHLO":
            caps = ["250-pipeserver"]
            if options.pipelining:
                caps.append("250-PIPELINING")
            if options.smtputf8:
                caps.append("250-SMTPUTF8")
            if options.size is not None:
                caps.append(f"250-SIZE {options.size}")
            caps.append("250 8BITMIME")
            return "\r\n".join(caps).encode() + b"\r\n"
        if verb == "MAIL":
            server.mails += 1
            if server.mails in options.drop_at_mail:
                return None
            if server.mails in options.reply_421_at_mail:
                return b"421 4.3.2 closing down\r\n"
            if self.mail_from is not None:
                return b"503 5.5.1 nested MAIL\r\n"
            self.mail_from = line[line.index("<") + 1 : line.index(">")]
            return b"250 2.1.0 ok\r\n"
        if verb == "RCPT":
            if self.mail_from is None:
                return b"503 5.5.1 need MAIL\r\n"
            address = line[line.index("<") + 1 : line.index(">")]
            if address in options.refuse:
                code, text = options.refuse[address]
                return f"{code} {text}\r\n".encode()
            self.rcpts.append(address)
            return b"250 2.1.5 ok\r\n"
        if verb == "DATA":
            if not self.rcpts and not options.open_data_without_recipients:
                return b"554 5.5.1 no valid recipients\r\n"
            self.in_data = True
            return b"354 go ahead\r\n"
        if verb == "RSET":
            self._reset()
            return b"250 2.0.0 ok\r\n"
        if verb == "NOOP":
            server.noops += 1
            return b"250 2.0.0 ok\r\n"
        if verb == "QUIT":
            return b"221 2.0.0 bye\r\n"
        return b"502 5.5.2 unknown command\r\n"

    def _end_of_data(self, chunk: bytes) -> bytes | None:
        server = self.server
        server.dots += 1
        content = chunk.replace(b"\r\n..", b"\r\n.")
        if content.startswith(b".."):
            content = content[1:]
        stored = Stored(self.mail_from or "", list(self.rcpts), content, self.number)
        self._reset()
        if server.dots in server.options.drop_after_dot:
            server.unanswered.append(stored)
            return None
        if not stored.rcpt_tos:
            return b"554 5.5.1 no valid recipients\r\n"
        server.messages.append(stored)
        return b"250 2.0.0 queued\r\n"

    def _reset(self) -> None:
        self.mail_from = None
        self.rcpts = []


class PipeServer:
    """Start with `await PipeServer(...).start()`; `close()` drops every connection."""

    def __init__(
        self,
        *,
        pipelining: bool = True,
        smtputf8: bool = False,
        size: int | None = None,
        refuse: dict[str, tuple[int, str]] | None = None,
        drop_at_mail: set[int] | None = None,
        reply_421_at_mail: set[int] | None = None,
        drop_after_dot: set[int] | None = None,
        reply_delay: float = 0.0,
        open_data_without_recipients: bool = False,
    ) -> None:
        self.options = _Options(
            pipelining=pipelining,
            smtputf8=smtputf8,
            size=size,
            refuse=refuse or {},
            drop_at_mail=drop_at_mail or set(),
            reply_421_at_mail=reply_421_at_mail or set(),
            drop_after_dot=drop_after_dot or set(),
            reply_delay=reply_delay,
            open_data_without_recipients=open_data_without_recipients,
        )
        self.host = "127.0.0.1"
        self.port = 0
        self.connections = 0
        self.mails = 0
        self.dots = 0
        self.noops = 0
        self.messages: list[Stored] = []
        self.unanswered: list[Stored] = []
        self.commands: list[tuple[int, str]] = []
        self.reads: dict[int, list[bytes]] = {}
        self.live: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> PipeServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def _factory(self) -> _Connection:
        self.connections += 1
        return _Connection(self, self.connections)

    def drop_all(self) -> None:
        """Cut every open connection (a server restart, as the client sees it)."""
        for connection in list(self.live):
            if connection.transport is not None:
                connection.transport.abort()

    async def close(self) -> None:
        self.drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
