"""How fast the sandbox captures mail: messages per second into a real SandboxServer on loopback.

The server runs in this process with the store `mailwright serve` uses (its default caps: 500
messages, 50 MiB), in a fresh directory; Postfix's load generator `smtp-source` (C, in its
own process, so the client costs the server nothing) sends `--messages` 4.4 KB messages over
1 and 4 SMTP connections. With 3,000 messages and a cap of 500, five captures in six also
evict the oldest message: the case the goal names (at least 500 msg/s with eviction on).
Each case runs `--runs` times; the median is printed.

    .venv/bin/python bench/sandbox_capture.py
    .venv/bin/python bench/sandbox_capture.py --messages 1000 --connections 1

Needs the Debian `postfix` package (/usr/sbin/smtp-source), as `make test` installs it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from mailwright.sandbox import SandboxServer, SandboxStore

SMTP_SOURCE = "/usr/sbin/smtp-source"


def one_run(count: int, connections: int) -> float:
    with tempfile.TemporaryDirectory(prefix="mw-sandbox-") as work:
        store = SandboxStore(Path(work) / "sandbox")
        server = SandboxServer(store, port=0).start()
        try:
            started = time.perf_counter()
            load = ["-s", str(connections), "-m", str(count), "-l", "4400"]
            envelope = ["-f", "bench@example.org", "-t", "sink@example.net"]
            subprocess.run([SMTP_SOURCE, *load, *envelope, f"127.0.0.1:{server.port}"], check=True)
            took = time.perf_counter() - started
        finally:
            server.stop()
        kept = store.count()
        if kept != min(count, store.max_messages):
            raise RuntimeError(f"the store kept {kept} messages, expected {min(count, store.max_messages)}")
        return count / took


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--connections", default="1,4", help="comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.messages:,} messages into a sandbox capped at 500 (eviction on), median of {args.runs}")
    for connections in (int(c) for c in args.connections.split(",")):
        rates = [one_run(args.messages, connections) for _ in range(args.runs)]
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"  {connections} connection(s): {statistics.median(rates):7,.0f} msg/s  (runs: {runs})")


if __name__ == "__main__":
    main()
