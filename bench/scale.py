"""Scale-out: one batch sent by 1, 2 and 4 worker processes on PostgreSQL + RabbitMQ + Redis.

For each sink (Postfix's `smtp-sink`, answering at once, and `bench/delay_sink.py`, a relay
20 ms away; both from bench/throughput.py) and each set-up:

* `embedded`: the default, SQLite and one `mailwright worker` with the in-process broker,
* `scale N`: N `mailwright worker` processes on a fresh PostgreSQL database, RabbitMQ and
  Redis (MAILWRIGHT_DATABASE_URL, MAILWRIGHT_BROKER, MAILWRIGHT_REDIS_URL),

the workers are started and registered first, then one batch of `--messages` messages is
stored (by this process, through the services, as `send-batch --no-wait` or the API would)
and announced; the figure is messages per second from "stored" to "finished", read from the
run's row every 20 ms. The embedded worker finds the batch at its next poll (at most 1 s
late; said in the output). Each set-up runs once per sink; the curve and each set-up's ratio to
`scale 1` are printed.

    .venv/bin/python bench/scale.py                    # 20,000 messages, about 5 minutes here
    .venv/bin/python bench/scale.py --messages 5000    # quicker

RabbitMQ and Redis: the ones on 127.0.0.1:5672 (guest/guest) and 127.0.0.1:6379 when they
answer, else private instances started here (tests/support). PostgreSQL: the server
`make test` sets up (MAILWRIGHT_TEST_POSTGRES_URL to use another).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from tests.support.announcer import AnnouncerThread  # noqa: E402
from tests.support.postgres import fresh_database  # noqa: E402
from tests.support.rabbitmq import RabbitMQServer  # noqa: E402
from tests.support.redis_server import RedisServer, answers  # noqa: E402
from throughput import MAILWRIGHT, Sink, sinks  # noqa: E402

from mailwright.config import Settings  # noqa: E402
from mailwright.services.app import Services  # noqa: E402
from mailwright.services.targets import TargetCreate  # noqa: E402

CONNECTIONS_PER_WORKER = 16
FINISHED = {"succeeded", "failed", "cancelled"}


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def amqp_url(work: Path) -> Iterator[str]:
    if _answers(5672):
        yield "amqp://guest:guest@127.0.0.1:5672/"
        return
    with RabbitMQServer(work / "rabbitmq") as server:
        yield server.url


@contextmanager
def redis_url(work: Path) -> Iterator[str]:
    if answers("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379/0"
        return
    with RedisServer(work / "redis") as server:
        yield server.url


class SetUp:
    """A home (and database), a target at the sink, and N running workers."""

    def __init__(self, work: Path, sink: Sink, env: dict[str, str], workers: int) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
        self.env.update(env, MAILWRIGHT_HOME=str(self.home), MAILWRIGHT_LOG_LEVEL="WARNING")
        settings = Settings(
            home=self.home,
            database_url=env.get("MAILWRIGHT_DATABASE_URL"),
            broker=env.get("MAILWRIGHT_BROKER", "embedded"),
            redis_url=env.get("MAILWRIGHT_REDIS_URL"),
        )
        self.services = Services(settings)
        fields = {"display_name": "Sink", "server": "127.0.0.1", "port": sink.port, "security": "none"}
        # Connections enough for every worker: the cap is shared across workers (through Redis).
        limits = {"max_connections": CONNECTIONS_PER_WORKER * workers, "no_account_keys": True}
        self.services.targets.create(TargetCreate.model_validate({**fields, **limits}))
        self.announcer = AnnouncerThread(self.services).start() if settings.broker != "embedded" else None
        self.processes = [
            subprocess.Popen(
                [MAILWRIGHT, "worker"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=(self.home / f"worker{i}.log").open("wb"),
                stdin=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]
        deadline = time.monotonic() + 120
        while len(self.services.workers.live()) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not start; see {self.home}/worker*.log")
            time.sleep(0.1)

    def batch(self, count: int, concurrency: int) -> float:
        """Messages per second from the batch stored to the batch finished."""
        messages = (
            (f"line {i + 1}", {"from": "bench@example.org", "to": [f"r{i}@example.net"], "subject": f"#{i}"})
            for i in range(count)
        )
        created = self.services.batches.create(messages, target="Sink", concurrency=concurrency)
        started = time.perf_counter()
        while (status := self.services.runs.status(created.run_id)) not in FINISHED:
            time.sleep(0.02)
        took = time.perf_counter() - started
        counts = self.services.runs.get(created.run_id).step_counts or {}
        if status != "succeeded" or counts.get("succeeded") != count:
            raise RuntimeError(f"the batch ended {status}: {counts}")
        return count / took

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=120)
        if self.announcer is not None:
            self.announcer.stop()
        self.services.close()


def measure(work: Path, sink: Sink, env: dict[str, str], workers: int, count: int) -> float:
    setup = SetUp(work, sink, env, workers)
    try:
        return setup.batch(count, concurrency=CONNECTIONS_PER_WORKER)
    finally:
        setup.close()


def wait_latency(work: Path, sink: Sink, env: dict[str, str], requests: int) -> tuple[float, float]:
    """Median and p95 (ms) of `POST /api/v1/send-email` with wait on a `serve --no-worker` host,
    its run executed by one worker process elsewhere."""
    setup = SetUp(work, sink, env, 1)
    port = _free_port()
    token = setup.services.tokens.create("bench").token
    serve_env = {k: v for k, v in setup.env.items() if k != "MAILWRIGHT_LOG_LEVEL"}
    server = subprocess.Popen(
        [MAILWRIGHT, "serve", "--no-worker", "--no-sandbox", "--port", str(port), "--log-level", "warning"],
        env=serve_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(base)
        message = {"target": "Sink", "from": "bench@example.org", "to": ["r@example.net"], "subject": "wait"}
        took: list[float] = []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            for _ in range(requests + 5):  # the first five warm the connections up
                started = time.perf_counter()
                answer = client.post("/api/v1/send-email", json=message)
                took.append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200 or answer.json().get("status") != "sent":
                    raise RuntimeError(f"send-email answered {answer.status_code}: {answer.text[:300]}")
        measured = sorted(took[5:])
        return statistics.median(measured), measured[int(len(measured) * 0.95) - 1]
    finally:
        server.terminate()
        server.wait(timeout=60)
        setup.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(base: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("serve --no-worker did not start")


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2,4", help="worker processes to try, comma-separated")
    parser.add_argument("--requests", type=int, default=200, help="send-with-wait requests to time")
    parser.add_argument("--wait-only", action="store_true", help="only the send-with-wait latency")
    args = parser.parse_args()
    if not args.wait_only:
        batches(args)
    latency(args)


def batches(args: argparse.Namespace) -> None:
    """The batch curve: embedded, then 1, 2, 4... worker processes, for each sink."""
    counts = [int(n) for n in args.workers.split(",")]
    rows: list[tuple[str, str, float]] = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mw-scale-")))
        broker = stack.enter_context(amqp_url(work))
        redis = stack.enter_context(redis_url(work))
        for sink in stack.enter_context(sinks()):
            rate = measure(work, sink, {}, 1, args.messages)
            rows.append((sink.name, "embedded (SQLite, 1 worker)", rate))
            print(f"{sink.name:>9}  embedded 1 worker: {rate:8,.0f} msg/s", flush=True)
            for n in counts:
                with fresh_database() as database:
                    env = {
                        "MAILWRIGHT_DATABASE_URL": database,
                        "MAILWRIGHT_BROKER": broker,
                        "MAILWRIGHT_REDIS_URL": redis,
                    }
                    rate = measure(work, sink, env, n, args.messages)
                rows.append((sink.name, f"scale {n}", rate))
                print(f"{sink.name:>9}  {n} worker(s), PG + RabbitMQ + Redis: {rate:8,.0f} msg/s", flush=True)
    print(f"\n{args.messages:,} messages per batch, {os.cpu_count()} CPUs; msg/s from stored to finished")
    print("| sink | set-up | msg/s | ÷ scale 1 |\n|---|---|---:|---:|")
    for sink_name in dict.fromkeys(r[0] for r in rows):
        base = next(rate for name, setup, rate in rows if name == sink_name and setup == "scale 1")
        for name, setup, rate in rows:
            if name == sink_name:
                print(f"| {name} | {setup} | {rate:,.0f} | {rate / base:.2f}× |")
    print("(the embedded worker finds a batch at its next poll: up to 1 s of its time is that wait)")


def latency(args: argparse.Namespace) -> None:
    """Send with wait across processes, woken through Redis or not."""
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mw-wait-")))
        broker = stack.enter_context(amqp_url(work))
        redis = stack.enter_context(redis_url(work))
        (loopback, *_) = stack.enter_context(sinks())
        print(
            f"\nPOST /api/v1/send-email with wait on `serve --no-worker`, one worker elsewhere, "
            f"{args.requests} requests:"
        )
        for label, with_redis in (
            ("woken through Redis", True),
            ("without Redis (the run's row read every 0.25 s)", False),
        ):
            with fresh_database() as database:
                env = {"MAILWRIGHT_DATABASE_URL": database, "MAILWRIGHT_BROKER": broker}
                if with_redis:
                    env["MAILWRIGHT_REDIS_URL"] = redis
                median, p95 = wait_latency(work, loopback, env, args.requests)
            print(f"  {label}: median {median:.1f} ms, p95 {p95:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
