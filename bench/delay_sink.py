"""A discard SMTP server that answers every command `delay` seconds after receiving it.

A stand-in for a relay 20 ms away: each reply (the greeting too) leaves exactly
`delay` after the command that asked for it arrived, so pipelined commands that
arrive together are answered together one delay later (not one delay each),
as over a real link with that round-trip time. It offers PIPELINING, 8BITMIME,
SIZE and SMTPUTF8, accepts everything and keeps nothing.

    python bench/delay_sink.py --port 2626 --delay 0.02
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque

EHLO = (
    b"250-delay-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n"
    b"250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"
)
REPLIES = {
    b"HELO": b"250 delay-sink\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
}
END_OF_DATA = b"\r\n.\r\n"


class DelaySession(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.in_data = False
        self.closing = False
        # Replies in order with the loop time each is due; one timer drains the head.
        self.outbox: deque[tuple[float, bytes, bool]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.reply(self.loop.time(), b"220 delay-sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        arrived = self.loop.time()
        self.buffer += data
        while not self.closing:
            if self.in_data:
                end = self.buffer.find(END_OF_DATA)
                if end < 0:
                    return
                del self.buffer[: end + len(END_OF_DATA)]
                self.in_data = False
                self.reply(arrived, b"250 2.0.0 Ok: queued\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 2]
            self.command(line, arrived)

    def command(self, line: bytes, arrived: float) -> None:
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.reply(arrived, EHLO)
        elif verb == b"DATA":
            # The body may begin right after DATA in this buffer: the message end is searched from here.
            self.buffer[:0] = b"\r\n"
            self.in_data = True
            self.reply(arrived, b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"QUIT":
            self.closing = True
            self.reply(arrived, b"221 2.0.0 Bye\r\n", close=True)
        else:
            self.reply(arrived, REPLIES.get(verb, b"502 5.5.2 Command not recognized\r\n"))

    def reply(self, arrived: float, text: bytes, *, close: bool = False) -> None:
        self.outbox.append((arrived + self.delay, text, close))
        if self.timer is None:
            self.timer = self.loop.call_at(self.outbox[0][0], self.flush)

    def flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        out = bytearray()
        close = False
        while self.outbox and self.outbox[0][0] <= now:
            _, text, close_after = self.outbox.popleft()
            out += text
            close = close or close_after
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes(out))
            if close:
                self.transport.close()
        if self.outbox:
            self.timer = self.loop.call_at(self.outbox[0][0], self.flush)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


async def serve(host: str, port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: DelaySession(delay), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2626)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds before each reply")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.delay))


if __name__ == "__main__":
    main()
