"""Latency and throughput of `POST /api/v1/send-email` (with `wait`, the default) under concurrency.

Starts, on loopback and in a fresh MAILWRIGHT_HOME:

* an SMTP sink: Postfix's `smtp-sink` when installed, else the counting test server
  (`tests/support/counting_smtp.py`, which also proves that every answered send arrived once),
* `mailwright serve --no-sandbox` (the venv's) on a free port, with an open-relay target
  "Sink" (security none, no account key, the target's default pool) pointing at the sink,

then measures 4.4 KB text messages, each to its own recipient:

1. sequential: `--sequential` requests (200) one after another: p50/p95/p99 latency;
2. concurrent: `--requests` requests (500) through one httpx.AsyncClient with `--concurrency`
   (50) in flight: requests/s, p50/p95/p99, errors, and the server's CPU time per send
   (utime + stime of the serve process and its children, from /proc).

Each phase is preceded by a warm-up that is not counted.  Everything started is stopped
at the end, on an error, on Ctrl-C and on SIGTERM.  `--py-spy FILE` samples the server
during the concurrent phase (py-spy must be installed: `.venv/bin/pip install py-spy`).

    .venv/bin/python bench/api_concurrency.py                 # about 30 s here
    .venv/bin/python bench/api_concurrency.py --quick         # 50 sequential, 150 concurrent
    .venv/bin/python bench/api_concurrency.py --concurrency 100 --requests 2000 --sequential 0

`--src DIR` runs Mailwright from another source tree (its `src/`, put first on PYTHONPATH
of every child), e.g. a commit measured apart from a working tree others are editing:

    mkdir /tmp/mw-head && git archive HEAD src | tar -x -C /tmp/mw-head
    .venv/bin/python bench/api_concurrency.py --src /tmp/mw-head/src

Goal: concurrency 50 at >= 150 requests/s with p95 < 1 s, and sequential p50 < 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

BIN = Path(sys.executable).parent
MAILWRIGHT = str(BIN / "mailwright")
SMTP_SINK = "/usr/sbin/smtp-sink"
REPO = Path(__file__).resolve().parent.parent
SENDER = "bench@example.org"
# The body of bench/throughput.py's API case, so the figures compare: about 4,000 bytes of text.
BODY = "".join(
    f"Line {i:03d}: the quick brown fox jumps over the lazy dog, again and again.\n" for i in range(50)
)
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
GOAL_RATE = 150.0
GOAL_P95_MS = 1000.0
GOAL_SEQUENTIAL_P50_MS = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + sum(self.errors.values())

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """Nearest rank over the successful requests (NaN when there were none)."""
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return math.nan
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# --- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{name}: nothing listens on port {port} after {START_TIMEOUT:.0f} s")


@contextmanager
def running(
    argv: list[str], *, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own session (a Ctrl-C reaches only us; we stop it), stopped on the way out."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True
        )
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


@dataclass
class Sink:
    name: str
    port: int
    counting_dir: Path | None = None


def start_sink(stack: ExitStack, kind: str, work: Path) -> Sink:
    if kind == "auto":
        kind = "smtp-sink" if shutil.which(SMTP_SINK) else "counting"
    if kind == "smtp-sink":
        port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink refuses to run as root
        process = stack.enter_context(
            running([SMTP_SINK, *user, f"127.0.0.1:{port}", "1024"], log=work / "sink.log")
        )
        wait_listening(port, process, "smtp-sink")
        return Sink("smtp-sink (Postfix)", port)
    # The counting server lives with the tests; it is imported from the repository.
    sys.path.insert(0, str(REPO))
    from tests.support.counting_smtp import CountingSMTPProcess

    directory = work / "counting-smtp"
    server = stack.enter_context(CountingSMTPProcess(directory))
    return Sink("counting test server (fsync per group)", server.port, counting_dir=directory)


def mailwright_env(home: Path, src: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    env["MAILWRIGHT_HOME"] = str(home)
    if src is not None:
        # Ahead of the venv's editable install, which is a path entry in site-packages.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def mailwright(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([MAILWRIGHT, *args], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"mailwright {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def start_serve(
    stack: ExitStack, work: Path, sink: Sink, src: Path | None
) -> tuple[str, str, subprocess.Popen[bytes]]:
    """The base URL, a bearer token and the serve process."""
    env = mailwright_env(work / "home", src)
    mailwright(
        env,
        *("targets", "create", "--name", "Sink", "--server", "127.0.0.1", "--port", str(sink.port)),
        *("--security", "none", "--no-account-keys"),
    )
    token = mailwright(env, "tokens", "create", "bench").split()[0]
    port = free_port()
    argv = [MAILWRIGHT, "serve", "--no-sandbox", "--host", "127.0.0.1", "--port", str(port)]
    process = stack.enter_context(running(argv, log=work / "serve.log", env=env))
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"mailwright serve exited with {process.returncode}:\n{tail(work / 'serve.log')}"
            )
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return base_url, token, process
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"mailwright serve did not answer within {START_TIMEOUT:.0f} s")
        time.sleep(0.1)


@contextmanager
def profiled(pid: int, output: Path | None, *, log: Path) -> Iterator[None]:
    """py-spy samples `pid` (its threads apart, idle ones left out) while the block runs."""
    if output is None:
        yield
        return
    py_spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if py_spy is None:
        raise RuntimeError("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    argv = [py_spy, "record", "--pid", str(pid), "--rate", "200", "--threads", "--format", "raw"]
    with running([*argv, "--output", str(output)], log=log) as recorder:
        yield
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
        recorder.wait(STOP_TIMEOUT)


def tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except FileNotFoundError:
        return ""


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its living descendants (threads are in the process's own figure)."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu seconds)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = text[text.rindex(")") + 2 :].split()  # after "(comm) ": field 3 (state) is fields[0]
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    wanted, total = {pid}, 0.0
    for _ in range(8):  # a few generations at most; every pass adds the next one
        wanted |= {child for child, (parent, _) in stats.items() if parent in wanted}
    for member in wanted:
        total += stats.get(member, (0, 0.0))[1]
    return total


# --- the requests --------------------------------------------------------------------------


def payload(index: int) -> dict[str, object]:
    return {
        "target": "Sink",
        "from": SENDER,
        "to": [f"r{index}@example.net"],
        "subject": f"API benchmark {index}",
        "body": BODY,
    }


def outcome(answer: httpx.Response) -> str | None:
    """None for a sent message, else what went wrong (the status code and error code)."""
    return outcome_of(answer.status_code, answer.content)


def outcome_of(status: int, body: bytes) -> str | None:
    if status == 200:
        return None
    try:
        answer = json.loads(body)
        code = answer.get("error", {}).get("code") or answer.get("status")
    except (ValueError, AttributeError):
        code = None
    return f"HTTP {status}" + (f" {code}" if code else "")


def sequential(base_url: str, token: str, count: int, *, warm: Phase, warmup: int, pid: int) -> Phase:
    phase = Phase("sequential")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT) as client:

        def send(into: Phase, index: int) -> None:
            began = time.perf_counter()
            try:
                error = outcome(client.post("/api/v1/send-email", json=payload(index)))
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            record(into, error, (time.perf_counter() - began) * 1000)

        for index in range(warmup):
            send(warm, 2_000_000 + index)
        cpu, client_cpu, started = cpu_seconds(pid), time.process_time(), time.perf_counter()
        for index in range(count):
            send(phase, index)
        phase.seconds = time.perf_counter() - started
        phase.server_cpu = cpu_seconds(pid) - cpu
        phase.client_cpu = time.process_time() - client_cpu
    return phase


def record(phase: Phase, error: str | None, elapsed_ms: float) -> None:
    if error is None:
        phase.latencies_ms.append(elapsed_ms)
    else:
        phase.errors[error] += 1


Post = Callable[[int], Awaitable[str | None]]


async def fire(post: Post, phase: Phase, indexes: Iterator[int], concurrency: int) -> None:
    """`concurrency` senders, each taking the next index until none is left."""

    async def sender() -> None:
        for index in indexes:
            began = time.perf_counter()
            error = await post(index)
            record(phase, error, (time.perf_counter() - began) * 1000)

    await asyncio.gather(*(sender() for _ in range(concurrency)))


async def measured(post: Post, phase: Phase, count: int, *, warm: Phase, concurrency: int, pid: int) -> None:
    # One request per sender first: the connections are open before the clock starts.
    await fire(post, warm, iter(range(1_000_000, 1_000_000 + concurrency)), concurrency)
    cpu, client_cpu, started = cpu_seconds(pid), time.process_time(), time.perf_counter()
    await fire(post, phase, iter(range(count)), concurrency)
    phase.seconds = time.perf_counter() - started
    phase.server_cpu = cpu_seconds(pid) - cpu
    phase.client_cpu = time.process_time() - client_cpu


async def concurrent_httpx(
    base_url: str, token: str, count: int, *, warm: Phase, concurrency: int, pid: int
) -> Phase:
    phase = Phase(f"concurrency {concurrency} (httpx)")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT, limits=limits
    ) as client:

        async def post(index: int) -> str | None:
            try:
                return outcome(await client.post("/api/v1/send-email", json=payload(index)))
            except httpx.HTTPError as exc:
                return type(exc).__name__

        await measured(post, phase, count, warm=warm, concurrency=concurrency, pid=pid)
    return phase


async def concurrent_aiohttp(
    base_url: str, token: str, count: int, *, warm: Phase, concurrency: int, pid: int
) -> Phase:
    import aiohttp

    phase = Phase(f"concurrency {concurrency}")
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(
        base_url=base_url, headers=headers, connector=connector, timeout=timeout
    ) as session:

        async def post(index: int) -> str | None:
            try:
                async with session.post("/api/v1/send-email", json=payload(index)) as answer:
                    return outcome_of(answer.status, await answer.read())
            except (aiohttp.ClientError, TimeoutError) as exc:
                return type(exc).__name__

        await measured(post, phase, count, warm=warm, concurrency=concurrency, pid=pid)
    return phase


CLIENTS = {"aiohttp": concurrent_aiohttp, "httpx": concurrent_httpx}


def problems(log_file: Path, limit: int = 40) -> str:
    """The server log's warnings, errors and tracebacks (the last `limit` lines of them)."""
    if not log_file.is_file():
        return ""
    lines = log_file.read_text(errors="replace").splitlines()
    wanted = [
        line
        for line in lines
        if any(word in line for word in ("WARNING", "ERROR", "Traceback", "Error", "  File "))
    ]
    return "\n".join(wanted[-limit:])


# --- reporting -----------------------------------------------------------------------------


def table(phases: list[Phase]) -> str:
    lines = [
        "| case | requests | errors | req/s | p50 ms | p95 ms | p99 ms "
        "| server CPU ms/send | client CPU ms/send |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in phases:
        sends = max(1, len(phase.latencies_ms))
        lines.append(
            f"| {phase.name} | {phase.requests:,} | {sum(phase.errors.values()):,} | {phase.rate:,.0f} "
            f"| {phase.percentile(50):,.1f} | {phase.percentile(95):,.1f} | {phase.percentile(99):,.1f} "
            f"| {phase.server_cpu / sends * 1000:.1f} | {phase.client_cpu / sends * 1000:.1f} |"
        )
    return "\n".join(lines)


def verdicts(phases: list[Phase], concurrency: int) -> list[str]:
    lines = []
    for phase in phases:
        if phase.name == "sequential":
            met = phase.percentile(50) < GOAL_SEQUENTIAL_P50_MS
            lines.append(f"- sequential p50 < {GOAL_SEQUENTIAL_P50_MS:.0f} ms: {'met' if met else 'NOT met'}")
        elif concurrency == 50:
            met = phase.rate >= GOAL_RATE and phase.percentile(95) < GOAL_P95_MS and not phase.errors
            lines.append(
                f"- concurrency 50 >= {GOAL_RATE:.0f} req/s with p95 < {GOAL_P95_MS / 1000:.0f} s "
                f"and no errors: {'met' if met else 'NOT met'}"
            )
        if phase.errors:
            lines.append(f"- {phase.name} errors: {dict(phase.errors)}")
    return lines


def sink_check(sink: Sink, answered: int) -> str | None:
    """With the counting server: did every answered send arrive, and once?"""
    if sink.counting_dir is None:
        return None
    from tests.support.counting_smtp import CountingLog

    log = CountingLog(sink.counting_dir)
    return (
        f"- the sink stored {log.total():,} messages for {answered:,} answered sends (warm-ups included); "
        f"duplicate Message-IDs: {len(log.duplicates())}"
    )


# --- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500, help="requests of the concurrent phase")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight (0: skip the phase)")
    parser.add_argument("--sequential", type=int, default=200, help="sequential requests (0: skip the phase)")
    parser.add_argument("--warmup", type=int, default=20, help="sequential requests before the measured ones")
    parser.add_argument("--quick", action="store_true", help="50 sequential and 150 concurrent requests")
    parser.add_argument("--sink", choices=["auto", "smtp-sink", "counting"], default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, database)")
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="aiohttp",
        help="HTTP client of the concurrent phase: aiohttp (default) costs the machine about "
        "a tenth of the CPU httpx does at 50 requests in flight, which on 2 CPUs is taken from the server",
    )
    parser.add_argument(
        "--src", type=Path, help="run Mailwright from this src/ directory (default: the venv's)"
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="FILE",
        help="record the server with py-spy during the concurrent phase (its warm-up included), "
        "as collapsed stacks (flamegraph.pl input)",
    )
    args = parser.parse_args()
    if args.src is not None:
        args.src = args.src.resolve()
        if not (args.src / "mailwright" / "__init__.py").is_file():
            parser.error(f"--src {args.src}: no mailwright package there")
    if args.quick:
        args.sequential, args.requests, args.warmup = min(args.sequential, 50), min(args.requests, 150), 10
    return args


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: everything started is stopped


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="mw-api-bench-"))
    phases: list[Phase] = []
    warm = Phase("warm-up")  # not reported, but its sends reached the sink too
    try:
        with ExitStack() as stack:
            sink = start_sink(stack, args.sink, work)
            log(f"sink: {sink.name} on port {sink.port}; work directory {work}")
            base_url, token, serve = start_serve(stack, work, sink, args.src)
            log(f"mailwright serve (pid {serve.pid}) on {base_url}")
            if args.sequential:
                log(f"sequential: {args.sequential} requests after {args.warmup} to warm up")
                phase = sequential(
                    base_url, token, args.sequential, warm=warm, warmup=args.warmup, pid=serve.pid
                )
                phases.append(phase)
            if args.concurrency and args.requests:
                log(f"concurrent: {args.requests} requests, {args.concurrency} in flight")
                run = CLIENTS[args.client](
                    base_url, token, args.requests, warm=warm, concurrency=args.concurrency, pid=serve.pid
                )
                with profiled(serve.pid, args.py_spy, log=work / "py-spy.log"):
                    phases.append(asyncio.run(run))
            check = sink_check(sink, sum(len(p.latencies_ms) for p in [warm, *phases]))
            if any(p.errors for p in [warm, *phases]):
                log(f"requests failed; the server's log says:\n{problems(work / 'serve.log')}")
    except KeyboardInterrupt:
        log("interrupted: everything started was stopped")
        sys.exit(130)
    except RuntimeError as exc:
        sys.exit(f"error: {exc}\n{tail(work / 'serve.log')}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(
        "\nPOST /api/v1/send-email (wait), 4.4 KB text messages, one recipient each; "
        f"sink: {sink.name}; {os.cpu_count()} CPUs; target pool and worker at their defaults; "
        f"Mailwright from {args.src or 'the venv'}\n"
    )
    print(table(phases))
    print()
    for line in verdicts(phases, args.concurrency):
        print(line)
    if check is not None:
        print(check)


if __name__ == "__main__":
    main()
