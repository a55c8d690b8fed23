"""Throughput of Mailwright against Postfix's load generator and the usual Python ways to send.

One run starts two discard servers on loopback:

* Postfix's `smtp-sink` (C; answers at once; the physical anchor), and
* `bench/delay_sink.py`, which answers every command 20 ms after it arrived (a relay 20 ms
  away; pipelined commands are answered together),

and measures messages per second for 4.4 KB messages with 16 connections:

1. `smtp-source -d -s 16` (Postfix's C load generator; it cannot pipeline),
2. stdlib `smtplib`, a new connection per message, `EmailMessage` (what Airflow and Apprise do),
3. aiosmtplib, 16 reused connections, `EmailMessage` (the library baseline),
4. Mailwright `send-batch` end to end: a fresh MAILWRIGHT_HOME with a target pointing at the
   sink, messages given as data in a JSONL file, every message recorded as a run step.
   The figure is the wall clock of the whole command (start-up, checking and storing every
   message, sending, recording, summary); the send phase alone, as the command reports it,
   is printed beside it.

Each case runs `--runs` times (3 by default) and the median is printed, with Mailwright's ratio
to each case. Then the peak memory (max RSS) of `send-batch` with 100,000 messages, and the
latency of single `POST /api/v1/send-email` calls (`wait`, the default) through `mailwright
serve` to the loopback sink: median and p95 of 200 sequential requests.

    .venv/bin/python bench/throughput.py            # everything, about 3 minutes here
    .venv/bin/python bench/throughput.py --quick    # smaller counts, one run each

Needs the Debian `postfix` package (for /usr/sbin/smtp-sink and smtp-source).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx

BIN = Path(sys.executable).parent
MAILWRIGHT = str(BIN / "mailwright")
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
HERE = Path(__file__).resolve().parent
CONNECTIONS = 16
SENDER = "bench@example.org"
# A 4.4 KB message: about 4,000 bytes of text body plus the headers.
BODY = "".join(
    f"Line {i:03d}: the quick brown fox jumps over the lazy dog, again and again.\n" for i in range(50)
)
PAYLOAD_BYTES = 4400

# Messages per run: slow cases get fewer, so the whole benchmark stays within minutes.
COUNTS = {
    "loopback": {"smtp-source": 20_000, "smtplib": 3_000, "aiosmtplib": 10_000, "mailwright": 20_000},
    "20 ms": {"smtp-source": 2_000, "smtplib": 400, "aiosmtplib": 2_000, "mailwright": 6_000},
}
QUICK_DIVISOR = 5
MEMORY_MESSAGES = 100_000
API_REQUESTS = 200


@dataclass
class Sink:
    name: str
    port: int


@dataclass
class Figures:
    rates: dict[str, dict[str, float]] = field(default_factory=dict)  # sink -> case -> median msg/s
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    send_phase: dict[str, float] = field(default_factory=dict)  # sink -> Mailwright's reported rate
    store_seconds: dict[str, float] = field(default_factory=dict)
    disk_kb: dict[str, float] = field(default_factory=dict)  # sink -> KB written to disk per message


# --- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextmanager
def started(argv: list[str], *, port: int, env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env
    )
    try:
        wait_listening(port)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def sinks() -> Iterator[list[Sink]]:
    loop_port, delay_port = free_port(), free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink refuses to run as root
    with (
        started([SMTP_SINK, *user, f"127.0.0.1:{loop_port}", "1024"], port=loop_port),
        started(
            [sys.executable, str(HERE / "delay_sink.py"), "--port", str(delay_port), "--delay", "0.02"],
            port=delay_port,
        ),
    ):
        yield [Sink("loopback", loop_port), Sink("20 ms", delay_port)]


# --- the cases ----------------------------------------------------------------------------


def email_message(index: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = f"r{index}@example.net"
    message["Subject"] = f"Benchmark message {index}"
    message.set_content(BODY)
    return message


def case_smtp_source(port: int, count: int) -> float:
    started_at = time.perf_counter()
    subprocess.run(
        [
            *(SMTP_SOURCE, "-d", "-s", str(CONNECTIONS), "-m", str(count), "-l", str(PAYLOAD_BYTES)),
            *("-f", SENDER, "-t", "r@example.net", f"127.0.0.1:{port}"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return count / (time.perf_counter() - started_at)


def case_smtplib(port: int, count: int) -> float:
    import smtplib

    def send(index: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.send_message(email_message(index))

    started_at = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CONNECTIONS) as pool:
        list(pool.map(send, range(count)))
    return count / (time.perf_counter() - started_at)


def case_aiosmtplib(port: int, count: int) -> float:
    async def connection(indexes: range) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False)
        await client.connect()
        for index in indexes:
            await client.send_message(email_message(index))
        await client.quit()

    async def main() -> None:
        await asyncio.gather(*(connection(range(i, count, CONNECTIONS)) for i in range(CONNECTIONS)))

    started_at = time.perf_counter()
    asyncio.run(main())
    return count / (time.perf_counter() - started_at)


def write_messages(path: Path, count: int) -> Path:
    if path.exists():
        return path
    with path.open("w", encoding="utf-8") as out:
        for index in range(count):
            fields = {
                "from": SENDER,
                "to": [f"r{index}@example.net"],
                "subject": f"Benchmark message {index}",
                "body": BODY,
            }
            out.write(json.dumps(fields) + "\n")
    return path


def mailwright_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    env["MAILWRIGHT_HOME"] = str(home)
    return env


def mailwright(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAILWRIGHT, *args], env=env, capture_output=True, text=True, check=True)


def fresh_home(work: Path, port: int) -> dict[str, str]:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
    env = mailwright_env(home)
    mailwright(
        env,
        *("targets", "create", "--name", "Sink", "--server", "127.0.0.1", "--port", str(port)),
        *("--security", "none", "--no-account-keys", "--max-connections", str(CONNECTIONS)),
    )
    return env


@dataclass
class BatchRun:
    wall_rate: float
    send_rate: float
    store_seconds: float
    disk_kb_per_message: float


def run_send_batch(env: dict[str, str], messages: Path, count: int) -> BatchRun:
    # The child's blocks written to disk: the difference in what waited-for children used.
    written_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock
    started_at = time.perf_counter()
    proc = subprocess.Popen(
        [MAILWRIGHT, "send-batch", "--target", "Sink", "--file", str(messages), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started_at
    if proc.returncode != 0:
        raise RuntimeError(f"send-batch failed (exit {proc.returncode}):\n{stderr[-2000:]}")
    summary = json.loads(stdout)
    if summary["sent"] != count:
        raise RuntimeError(f"send-batch sent {summary['sent']} of {count}: {summary}")
    written = resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock - written_before
    return BatchRun(
        wall_rate=count / wall,
        send_rate=float(summary["messages_per_second"]),
        store_seconds=float(summary["store_seconds"]),
        disk_kb_per_message=written * 512 / 1024 / count,
    )


def peak_memory(work: Path, port: int, messages: Path, count: int) -> tuple[float, float]:
    """Max RSS (MB) of one `send-batch` of `count` messages, and its wall-clock rate."""
    env = fresh_home(work, port)
    started_at = time.perf_counter()
    proc = subprocess.Popen(
        [MAILWRIGHT, "send-batch", "--target", "Sink", "--file", str(messages), "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started_at
    if proc.returncode != 0:
        raise RuntimeError(f"send-batch of {count} messages failed (exit {proc.returncode})")
    return usage.ru_maxrss / 1024, count / wall


def api_latency(work: Path, port: int, requests: int) -> tuple[float, float]:
    """Median and p95 (ms) of sequential POST /api/v1/send-email (wait) to the sink."""
    env = fresh_home(work, port)
    token = mailwright(env, "tokens", "create", "bench").stdout.split()[0]
    api_port = free_port()
    body = {"target": "Sink", "from": SENDER, "to": ["r@example.net"], "subject": "latency", "body": BODY}
    with (
        started([MAILWRIGHT, "serve", "--no-sandbox", "--port", str(api_port)], port=api_port, env=env),
        httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client,
    ):
        timings = []
        for index in range(requests + 20):
            started_at = time.perf_counter()
            answer = client.post("/api/v1/send-email", json=body)
            elapsed = (time.perf_counter() - started_at) * 1000
            if answer.status_code != 200:
                raise RuntimeError(f"send-email answered {answer.status_code}: {answer.text[:500]}")
            if index >= 20:  # the first requests warm up connections and caches
                timings.append(elapsed)
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.95) - 1]


# --- running and reporting ---------------------------------------------------------------


def measure(name: str, runs: int, case: Callable[[], float], *, log: Callable[[str], None]) -> float:
    rates = []
    for attempt in range(runs):
        rate = case()
        rates.append(rate)
        log(f"  {name}: run {attempt + 1}/{runs}: {rate:,.0f} msg/s")
    return statistics.median(rates)


def measure_sink(
    figures: Figures,
    sink: Sink,
    *,
    counts: dict[str, int],
    runs: int,
    work: Path,
    log: Callable[[str], None],
) -> None:
    log(f"{sink.name} sink on port {sink.port}")
    port = sink.port
    rates = {
        "smtp-source": measure(
            "smtp-source", runs, lambda: case_smtp_source(port, counts["smtp-source"]), log=log
        ),
        "smtplib": measure("smtplib", runs, lambda: case_smtplib(port, counts["smtplib"]), log=log),
        "aiosmtplib": measure(
            "aiosmtplib", runs, lambda: case_aiosmtplib(port, counts["aiosmtplib"]), log=log
        ),
    }
    messages = write_messages(work / f"messages-{counts['mailwright']}.jsonl", counts["mailwright"])
    batches: list[BatchRun] = []

    def ours() -> float:
        result = run_send_batch(fresh_home(work, port), messages, counts["mailwright"])
        batches.append(result)
        log(
            f"    (send phase {result.send_rate:,.0f} msg/s; stored in {result.store_seconds:.1f} s; "
            f"{result.disk_kb_per_message:,.0f} KB written per message)"
        )
        return result.wall_rate

    rates["mailwright"] = measure("mailwright send-batch", runs, ours, log=log)
    figures.rates[sink.name] = rates
    figures.send_phase[sink.name] = statistics.median(b.send_rate for b in batches)
    figures.store_seconds[sink.name] = statistics.median(b.store_seconds for b in batches)
    figures.disk_kb[sink.name] = statistics.median(b.disk_kb_per_message for b in batches)


def table(figures: Figures) -> str:
    lines = [
        "| case | sink | messages per run | msg/s (median) | Mailwright ÷ case |",
        "|---|---|---:|---:|---:|",
    ]
    for sink, rates in figures.rates.items():
        ours = rates["mailwright"]
        for case, rate in rates.items():
            ratio = "—" if case == "mailwright" else f"{ours / rate:.2f}×"
            count = figures.counts[sink][case]
            lines.append(f"| {LABELS[case]} | {sink} | {count:,} | {rate:,.0f} | {ratio} |")
    return "\n".join(lines)


LABELS = {
    "smtp-source": "`smtp-source -d -s 16` (C)",
    "smtplib": "smtplib, new connection per message",
    "aiosmtplib": "aiosmtplib, 16 reused connections",
    "mailwright": "Mailwright `send-batch` (wall clock)",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each case (the median is printed)")
    parser.add_argument("--quick", action="store_true", help="a fifth of the messages, one run each")
    parser.add_argument("--no-memory", action="store_true", help="skip the 100,000-message memory run")
    parser.add_argument("--no-api", action="store_true", help="skip the API latency run")
    parser.add_argument("--only", choices=["loopback", "20 ms"], help="one sink only")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    divisor = QUICK_DIVISOR if args.quick else 1
    for tool in (SMTP_SINK, SMTP_SOURCE):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: install the Debian postfix package")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    figures = Figures()
    started_at = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mw-bench-") as tmp, sinks() as servers:
        work = Path(tmp)
        for sink in servers:
            if args.only and sink.name != args.only:
                continue
            counts = {case: max(50, n // divisor) for case, n in COUNTS[sink.name].items()}
            figures.counts[sink.name] = counts
            measure_sink(figures, sink, counts=counts, runs=runs, work=work, log=log)
        memory: tuple[float, float] | None = None
        if not args.no_memory:
            count = MEMORY_MESSAGES // divisor
            log(f"peak memory: send-batch of {count:,} messages to the loopback sink")
            big = write_messages(work / f"messages-{count}.jsonl", count)
            memory = peak_memory(work, servers[0].port, big, count)
        latency: tuple[float, float] | None = None
        if not args.no_api:
            log(f"API latency: {API_REQUESTS} sequential POST /api/v1/send-email to the loopback sink")
            latency = api_latency(work, servers[0].port, API_REQUESTS)
    report(figures, memory=memory, memory_count=MEMORY_MESSAGES // divisor, latency=latency, runs=runs)
    log(f"benchmark took {time.monotonic() - started_at:.0f} s")


def report(
    figures: Figures,
    *,
    memory: tuple[float, float] | None,
    memory_count: int,
    latency: tuple[float, float] | None,
    runs: int,
) -> None:
    print(f"\n4.4 KB messages, {CONNECTIONS} connections, median of {runs} run(s); {os.cpu_count()} CPUs\n")
    print(table(figures))
    print()
    for sink, rate in figures.send_phase.items():
        print(
            f"- Mailwright send phase alone ({sink}): {rate:,.0f} msg/s as `send-batch` reports it "
            f"(checking and storing the messages took {figures.store_seconds[sink]:.1f} s before it); "
            f"{figures.disk_kb[sink]:,.0f} KB written to disk per message, database included"
        )
    if memory is not None:
        print(
            f"- Peak memory (max RSS) of `send-batch` with {memory_count:,} messages: {memory[0]:,.0f} MB "
            f"(at {memory[1]:,.0f} msg/s wall clock)"
        )
    if latency is not None:
        print(
            f"- `POST /api/v1/send-email` with wait, loopback sink: median {latency[0]:.1f} ms, "
            f"p95 {latency[1]:.1f} ms ({API_REQUESTS} sequential requests)"
        )


if __name__ == "__main__":
    main()
