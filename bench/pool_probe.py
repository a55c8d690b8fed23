"""Throughput probe: N messages of about 4.4 KB through the SMTP pool against smtp-sink on loopback.

    .venv/bin/python bench/pool_probe.py [--messages 20000] [--senders 16] [--connections 16]
        [--mode transport|send] [--sink HOST:PORT] [--latency-ms 20]

Starts `/usr/sbin/smtp-sink` on a free loopback port unless --sink is given, then prints msg/s.
With --latency-ms it starts instead a small sink (this script, in another process) that
answers each batch of commands that many milliseconds late, like a distant server.
`transport` drives `SMTPPool.deliver` with a prebuilt message; `send` goes through
`services.sending.deliver` (MIME building, results) with a target resolved from a scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from mailwright.domain.smtp import Security
from mailwright.transport.pool import PoolLimits, SMTPPool
from mailwright.transport.smtp import SMTPEndpoint
from mailwright.transport.tls import build_ssl_context

BODY = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n" * 54).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sink(port: int, delay_ms: int) -> subprocess.Popen[bytes]:
    command = ["/usr/sbin/smtp-sink", "-u", "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")]
    if delay_ms:
        for verb in ("MAIL", "RCPT", "DATA", "."):
            command += ["-W", f"{verb}:{delay_ms / 1000:g}"]
    command += [f"127.0.0.1:{port}", "1024"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _listening(process, port, "smtp-sink")


def start_slow_sink(port: int, latency_ms: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "--serve-slow", str(port), "--latency-ms", str(latency_ms)]
    return _listening(subprocess.Popen(command), port, "the slow sink")


def _listening(process: subprocess.Popen[bytes], port: int, name: str) -> subprocess.Popen[bytes]:
    """`process` once something accepts connections on `port` (5 s at most)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{name} did not start")


class SlowSink(asyncio.Protocol):
    """Answers every complete command of a read together, `latency` seconds later."""

    latency = 0.02

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        self.in_data = False
        transport.write(b"220 slow-sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out: list[bytes] = []
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    break
                self.buffer = self.buffer[end + 5 :]
                self.in_data = False
                out.append(b"250 2.0.0 queued\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                break
            verb = self.buffer[:4].upper()
            self.buffer = self.buffer[end + 2 :]
            if verb == b"EHLO":
                out.append(b"250-slow-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                self.in_data = True
                out.append(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                out.append(b"221 bye\r\n")
            else:
                out.append(b"250 ok\r\n")
        if out:
            asyncio.get_running_loop().call_later(self.latency, self._reply, b"".join(out))

    def _reply(self, payload: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(payload)


async def serve_slow(port: int, latency_ms: int) -> None:
    SlowSink.latency = latency_ms / 1000
    server = await asyncio.get_running_loop().create_server(SlowSink, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def drive(count: int, senders: int, send: Callable[[int], Awaitable[object]]) -> float:
    next_index = 0

    async def sender() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await send(index)

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    return time.perf_counter() - started


async def transport_probe(host: str, port: int, args: argparse.Namespace) -> None:
    endpoint = SMTPEndpoint(
        target_name="probe",
        host=host,
        port=port,
        security=Security.NONE,
        ssl_context=build_ssl_context(ca_file=None, verify=True),
        starttls_required=False,
    )
    limits = PoolLimits(max_connections=args.connections, max_messages_per_connection=args.per_connection)
    pool = SMTPPool(endpoint=endpoint, login=None, limits=limits)
    header = b"From: probe@example.org\r\nTo: sink@example.net\r\nSubject: probe\r\n\r\n"
    data = header + BODY

    async def send(_index: int) -> object:
        return await pool.deliver(
            sender="probe@example.org",
            recipients=[("sink@example.net", False)],
            data=data,
            smtputf8=False,
            continue_if_one_address_valid=False,
        )

    await send(0)
    elapsed = await drive(args.messages, args.senders, send)
    print(
        f"transport: {args.messages} messages of {len(data)} bytes, {args.senders} senders, "
        f"{args.connections} connections: {args.messages / elapsed:,.0f} msg/s ({pool.stats()})"
    )
    await pool.aclose()


async def send_probe(host: str, port: int, args: argparse.Namespace) -> None:
    from mailwright.config import Settings
    from mailwright.services.app import Services
    from mailwright.services.sending import SendEmailRequest, build_outgoing, deliver, resolve_sender
    from mailwright.services.targets import TargetCreate

    home = Path(tempfile.mkdtemp(prefix="mw-probe-"))
    try:
        os.environ["MAILWRIGHT_HOME"] = str(home)
        services = Services(Settings())
        services.targets.create(
            TargetCreate(
                display_name="sink",
                server=host,
                port=port,
                security=Security.NONE,
                no_account_keys=True,
                max_connections=args.connections,
                max_messages_per_connection=min(args.per_connection, 100_000),
            )
        )
        resolved = services.targets.resolve("sink", account_key=None)
        request = SendEmailRequest.model_validate(
            {
                "target": "sink",
                "from": "probe@example.org",
                "to": ["sink@example.net"],
                "subject": "probe",
                "body": BODY.decode(),
            }
        )
        message = build_outgoing(request, resolve_sender(request, resolved))

        async def send(_index: int) -> object:
            return await deliver(message, resolved, continue_if_one_address_valid=False)

        result = await send(0)
        elapsed = await drive(args.messages, args.senders, send)
        print(
            f"send path: {args.messages} messages of {result.size} bytes, {args.senders} senders, "  # type: ignore[attr-defined]
            f"{args.connections} connections: {args.messages / elapsed:,.0f} msg/s"
        )
        from mailwright.transport.pool import shared_pools

        await shared_pools().aclose()
        services.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--per-connection", type=int, default=100_000)
    parser.add_argument("--mode", choices=["transport", "send"], default="transport")
    parser.add_argument("--delay-ms", type=int, default=0, help="smtp-sink -W: answer each command late")
    parser.add_argument("--sink", help="HOST:PORT of a running sink (default: start smtp-sink)")
    parser.add_argument("--latency-ms", type=int, default=0, help="use a sink that answers this late")
    parser.add_argument("--serve-slow", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_slow:
        asyncio.run(serve_slow(args.serve_slow, args.latency_ms))
        return
    sink = None
    if args.sink:
        host, _, port_text = args.sink.rpartition(":")
        port = int(port_text)
    elif args.latency_ms:
        host, port = "127.0.0.1", free_port()
        sink = start_slow_sink(port, args.latency_ms)
    else:
        host, port = "127.0.0.1", free_port()
        sink = start_sink(port, args.delay_ms)
    try:
        probe = transport_probe if args.mode == "transport" else send_probe
        asyncio.run(probe(host, port, args))
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait(5)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
