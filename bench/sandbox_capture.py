"""How fast the sandbox captures mail: messages per second into a real SandboxServer on loopback.

The server runs in this process with the store `mailwright serve` uses (its default caps: 500
messages, 50 MiB), in a fresh directory; `--messages` 4.4 KB messages are sent over
`--connections` SMTP connections (aiosmtplib, each reusing its connection). With more
messages than the cap, most captures also evict the oldest: the case the goal names
(at least 500 msg/s with eviction on). Each case runs `--runs` times; the median is printed.

    .venv/bin/python bench/sandbox_capture.py
    .venv/bin/python bench/sandbox_capture.py --messages 2000 --connections 1,4
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mailwright.sandbox import SandboxServer, SandboxStore  # noqa: E402


def message(index: int) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "bench@example.org", f"r{index}@example.net", f"#{index}"
    mail.set_content(("Sandbox capture benchmark line. " * 3 + "\n") * 40)
    return mail


async def send_all(port: int, count: int, connections: int) -> None:
    async def one_connection(indexes: range) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60) as smtp:
            for index in indexes:
                await smtp.send_message(message(index))

    share = -(-count // connections)
    await asyncio.gather(
        *(one_connection(range(i * share, min(count, (i + 1) * share))) for i in range(connections))
    )


def one_run(count: int, connections: int) -> float:
    with tempfile.TemporaryDirectory(prefix="mw-sandbox-") as work:
        store = SandboxStore(Path(work) / "sandbox")
        server = SandboxServer(store, port=0).start()
        try:
            started = time.perf_counter()
            asyncio.run(send_all(server.port, count, connections))
            took = time.perf_counter() - started
        finally:
            server.stop()
        kept = store.count()
        if kept != min(count, store.max_messages):
            raise RuntimeError(f"the store kept {kept} messages, expected {min(count, store.max_messages)}")
        return count / took


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--connections", default="1,4", help="comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.messages:,} messages into a sandbox capped at 500 (eviction on), median of {args.runs}")
    for connections in (int(c) for c in args.connections.split(",")):
        rates = [one_run(args.messages, connections) for _ in range(args.runs)]
        print(
            f"  {connections} connection(s): {statistics.median(rates):7,.0f} msg/s  (runs: "
            + ", ".join(f"{r:,.0f}" for r in rates)
            + ")"
        )


if __name__ == "__main__":
    main()
