"""Limits shared by several worker processes through Redis (real Redis, real PostgreSQL, real sockets).

Each worker is a separate Python process (`tests.support.limits_worker`) with its own
`Services`, pools and event loop; they share the database and Redis, as workers on
several machines do. The counting SMTP server is the judge: when each message arrived,
and how many connections were open at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import redis

from mailwright.config import Settings
from mailwright.domain.capabilities import RateLimits
from mailwright.domain.smtp import Security
from mailwright.errors import RateLimitedError, TargetError
from mailwright.secrets import generate_key
from mailwright.services.app import Services
from mailwright.services.shared_limits import SharedRateLimiter, windows_of
from mailwright.services.targets import TargetCreate
from mailwright.transport.pool import ConnectionSlots, PoolLimits, SMTPPool, shared_pools
from mailwright.transport.redis_limits import RateWindows, RedisConnectionSlots, RedisLink
from mailwright.transport.smtp import SMTPEndpoint
from tests.support.counting_smtp import LINE_LIMIT, CountingSMTPProcess, CountingSMTPServer, FaultPlan
from tests.support.redis_server import RedisServer, settled, unique_prefix

REPO = Path(__file__).resolve().parents[2]
WORKER_TIMEOUT = 240.0  # generous: 2 CPUs are shared with other test sessions


class ConnectionCountingServer(CountingSMTPServer):
    """The counting SMTP server, also counting the connections open at once (and the peak)."""

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self.open_now = 0
        self.peak = 0
        self._count_lock = threading.Lock()

    async def _serve(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> asyncio.Server:
        core = self._core
        assert core is not None

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with self._count_lock:
                self.open_now += 1
                self.peak = max(self.peak, self.open_now)
            try:
                await core.handle(reader, writer)
            finally:
                with self._count_lock:
                    self.open_now -= 1

        return await asyncio.start_server(handle, sock=sock, limit=LINE_LIMIT, backlog=1024)


class Cluster:
    """A shared database with one target, and a way to run worker processes against it."""

    def __init__(self, tmp_path: Path, database_url: str, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.redis_url = redis_url
        self.prefix = unique_prefix()
        self.secret_key = generate_key()
        self.services = Services(
            Settings(home=tmp_path / "admin", database_url=database_url, secret_key=self.secret_key)
        )
        link = RedisLink.connect(redis_url, prefix=self.prefix)
        settled(link)  # a Redis in use: no pause as after a restart that lost the keys
        link.close()

    def target(self, server: CountingSMTPServer | CountingSMTPProcess, **settings: Any) -> str:
        created = self.services.targets.create(
            TargetCreate(
                display_name="Shared relay",
                server="127.0.0.1",
                port=server.port,
                security="none",
                no_account_keys=True,
                connect_timeout=5,
                command_timeout=10,
                **settings,
            )
        )
        return created.display_name

    def start_workers(
        self, target: str, *, workers: int, count: int, delay: float = 3.0
    ) -> list[subprocess.Popen[str]]:
        start_at = time.time() + delay  # all of them send from the same moment
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
        env = {k: v for k, v in env.items() if not k.startswith("MAILWRIGHT_")}
        processes = []
        for n in range(workers):
            command = [
                sys.executable,
                "-m",
                "tests.support.limits_worker",
                "--home",
                str(self.tmp_path / f"w{n}"),
            ]
            command += ["--database-url", self.database_url, "--redis-url", self.redis_url]
            # "=": a generated key may start with "-", which argparse would take for an option (a 1 in
            # 4 failure: the workers exited at once and the test waited for mail that never came).
            command += [f"--secret-key={self.secret_key}", "--prefix", self.prefix, "--target", target]
            command += ["--count", str(count), "--tag", f"w{n}", "--start-at", f"{start_at:.3f}"]
            stderr = (self.tmp_path / f"w{n}.log").open("w")
            processes.append(
                subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
            )
        return processes

    def results(self, processes: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
        out = []
        for n, process in enumerate(processes):
            stdout, _ = process.communicate(timeout=WORKER_TIMEOUT)
            log = (self.tmp_path / f"w{n}.log").read_text(errors="replace")
            assert process.returncode == 0, f"worker w{n} exited {process.returncode}:\n{log[-3000:]}"
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out

    def log(self, n: int) -> str:
        return (self.tmp_path / f"w{n}.log").read_text(errors="replace")

    def close(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*"))
            if keys:
                client.delete(*keys)
        except redis.RedisError:
            pass
        finally:
            client.close()
        self.services.close()


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, pg_url, redis_url)
    yield made
    made.close()


def most_in_any_window(times: list[float], window: float = 1.0) -> int:
    """The most arrivals in any half-open interval [t, t + window) (those starting at an arrival suffice)."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, moment in enumerate(ordered):
        while moment - ordered[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_most_in_any_window() -> None:
    assert most_in_any_window([]) == 0
    assert most_in_any_window([0.0, 0.5, 0.999, 1.0, 1.5]) == 3
    assert most_in_any_window([0.0, 1.0, 2.0]) == 1


def assert_all_sent(results: list[dict[str, Any]], *, each: int) -> None:
    for result in results:
        assert result["run_status"] == "succeeded", result
        assert result["steps"] == {"succeeded": each}, result  # none failed, none unknown


def test_three_workers_never_exceed_20_per_second_at_the_server(cluster: Cluster, tmp_path: Path) -> None:
    # The server in a process of its own, as a real one would be: the arrival times it records
    # are then not held up by this test process's threads (they share one interpreter lock).
    with CountingSMTPProcess(tmp_path / "smtp") as server:
        target = cluster.target(server, rate_per_second=20, max_connections=4)
        workers, each = 3, 50
        started = time.monotonic()
        results = cluster.results(cluster.start_workers(target, workers=workers, count=each))
        elapsed = time.monotonic() - started
        server.log.wait_for_total(workers * each, timeout=30)
        messages = server.log.messages()
    assert_all_sent(results, each=each)
    assert len(messages) == workers * each
    assert not [mid for mid, n in Counter(m.message_id for m in messages).items() if n > 1]
    times = [m.time for m in messages]
    assert most_in_any_window(times) <= 20, sorted(times)
    # Shared, not per process: 150 messages at 20/s take more than 7 s (3 processes alone would
    # each have sent their 50 in under 3 s).
    assert max(times) - min(times) >= (workers * each - 20) / 20
    assert elapsed < WORKER_TIMEOUT


def test_connection_cap_of_2_holds_over_3_workers(cluster: Cluster, tmp_path: Path) -> None:
    # A slow server (every reply 20 ms late) keeps connections busy, so each pool wants more.
    with ConnectionCountingServer(tmp_path / "smtp", faults=FaultPlan(reply_delay=0.02)) as server:
        target = cluster.target(server, max_connections=2)
        workers, each = 3, 40
        results = cluster.results(cluster.start_workers(target, workers=workers, count=each))
        server.log.wait_for_total(workers * each, timeout=30)
        messages = server.log.messages()
        peak = server.peak
    assert_all_sent(results, each=each)
    assert len(messages) == workers * each
    assert peak <= 2, f"{peak} connections were open at once"
    assert peak == 2  # the cap was reached (and so tested)
    assert len({m.connection for m in messages}) >= 2


def test_redis_restarted_mid_run_loses_nothing(tmp_path: Path, pg_url: str) -> None:
    with RedisServer(Path(f"/tmp/mw-redis-{os.getpid()}-{time.monotonic_ns()}")) as private:
        made = Cluster(tmp_path, pg_url, private.url)
        try:
            with ConnectionCountingServer(tmp_path / "smtp") as server:
                target = made.target(server, rate_per_second=20, max_connections=2)
                workers, each = 3, 40
                processes = made.start_workers(target, workers=workers, count=each, delay=2.0)
                server.log.wait_for_total(30, timeout=120)  # mid-run: about a quarter sent
                private.kill()
                killed = server.log.total()
                time.sleep(2.0)
                private.start()
                results = made.results(processes)
                server.log.wait_for_total(workers * each, timeout=30)
                messages = server.log.messages()
                peak = server.peak
            assert killed < workers * each
            assert peak <= 2, f"{peak} connections were open at once"
            assert_all_sent(results, each=each)
            assert len(messages) == workers * each
            assert not [mid for mid, n in Counter(m.message_id for m in messages).items() if n > 1]
            # Redis was away 2 s (longer than the window), so the empty Redis forgot nothing that counts.
            # But with 3 workers on a cap of 2 connections, connections change hands, and messages
            # already given their slot while waiting for one go out together when it comes: at most
            # what a pool holds in hand (2 connections x 4 messages) over the limit. A known
            # limitation (README "Limits across workers"): slots are taken before the connection.
            assert most_in_any_window([m.time for m in messages]) <= 20 + 2 * 4
            logs = "".join(made.log(n) for n in range(workers))
            assert "does not answer" in logs and "answers again" in logs
            assert "Traceback" not in logs
        finally:
            made.close()
            private.stop()


# --- the pool's hook, in one process, with slots counted in memory ------------------------


class MemorySlots:
    """`ConnectionSlots` in memory: counts what the pool holds, and the most it held at once."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}
        self.peak = 0
        self.released = 0

    async def acquire(self, *, key: str, limit: int) -> MemorySlot:
        while self.held.get(key, 0) >= limit:
            await asyncio.sleep(0.01)
        self.held[key] = self.held.get(key, 0) + 1
        self.peak = max(self.peak, self.held[key])
        return MemorySlot(self, key)

    async def wanted(self, *, key: str) -> bool:
        return False  # one process: nobody else waits


class MemorySlot:
    def __init__(self, owner: MemorySlots, key: str) -> None:
        self.owner, self.key, self.done = owner, key, False

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.owner.held[self.key] -= 1
            self.owner.released += 1


def pool_with(slots: ConnectionSlots, port: int, **limits: Any) -> SMTPPool:
    return SMTPPool(
        endpoint=SMTPEndpoint(
            target_name="capped",
            host="127.0.0.1",
            port=port,
            security=Security.NONE,
            ssl_context=ssl.create_default_context(),
            starttls_required=False,
            command_timeout=5.0,
        ),
        login=None,
        limits=PoolLimits(**limits),
        slots=slots,
        slots_key="target-1",
    )


async def deliver(pool: SMTPPool, number: int) -> None:
    await pool.deliver(
        sender="ops@example.org",
        recipients=[(f"user{number}@example.net", False)],
        data=f"Subject: capped {number}\r\n\r\nhi\r\n".encode(),
        smtputf8=False,
        continue_if_one_address_valid=False,
    )


async def test_a_pool_holds_one_slot_per_connection_and_gives_each_back(tmp_path: Path) -> None:
    slots = MemorySlots()
    with ConnectionCountingServer(tmp_path / "smtp", faults=FaultPlan(reply_delay=0.01)) as server:
        pool = pool_with(
            slots, server.port, max_connections=3, idle_timeout=0.3, max_messages_per_connection=5
        )
        await asyncio.gather(*(deliver(pool, n) for n in range(40)))
        assert slots.peak <= 3 and server.peak <= 3
        await asyncio.sleep(1.0)  # idle connections close, and give their slots back
        assert slots.held["target-1"] == 0 and slots.released == pool.opened
        await deliver(pool, 99)
        await pool.aclose()
        assert slots.held["target-1"] == 0
    # A connection that cannot open gives its slot back at once (the message fails with the reason).
    refused = pool_with(slots, _free_port(), max_connections=2)
    with pytest.raises(TargetError):
        await deliver(refused, 1)
    assert slots.held["target-1"] == 0
    await refused.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_no_slot_is_taken_while_the_pool_waits_for_a_connection(redis_url: str) -> None:
    """A message slotted while its worker has no connection would arrive late, bunched: it waits instead."""
    link = RedisLink.connect(redis_url, prefix=unique_prefix())
    settled(link)
    slots = MemorySlots()
    slots.held["target-1"] = 1  # another worker holds the only connection
    registry = shared_pools()
    registry.set_connection_slots(slots)
    limiter = SharedRateLimiter(MemoryDays(), RateWindows(link))
    limits = RateLimits(per_second=50)
    try:
        pool = registry.pool(
            target_id="target-1",
            identity="test",
            endpoint=lambda: pool_with(slots, _free_port()).endpoint,
            login=None,
            limits=PoolLimits(max_connections=1),
        )
        await limiter.acquire(key="target-1", limits=limits, target="Capped", max_wait=5)
        first = asyncio.create_task(deliver(pool, 1))  # waits for the connection slot
        await asyncio.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(RateLimitedError) as deferred:
            await limiter.acquire(key="target-1", limits=limits, target="Capped", max_wait=0.5)
        assert 0.4 < time.monotonic() - started < 3
        assert "connections are all in use by other workers" in deferred.value.message
        (second,) = windows_of(limits)
        assert link.client.zcard(RateWindows(link).key("target-1", second)) == 1  # only the first
        first.cancel()
    finally:
        registry.set_connection_slots(None)
        await registry.aclose()
        link.client.delete(*link.client.keys(f"{link.prefix}*"))
        link.close()


@dataclass
class MemoryDays:
    def take(self, *, key: str, day: date, limit: int) -> bool:
        return True


async def test_idle_connections_give_their_slots_to_a_worker_that_waits(
    redis_url: str, tmp_path: Path
) -> None:
    """Worker A's pool keeps its two connections idle (30 s idle timeout) and holds the whole cap;
    worker B asks for one: A's idle connections close and B sends within seconds, not 30."""
    prefix = unique_prefix()
    first = RedisConnectionSlots(RedisLink.connect(redis_url, prefix=prefix))
    second = RedisConnectionSlots(RedisLink.connect(redis_url, prefix=prefix))
    settled(first._link)
    with ConnectionCountingServer(tmp_path / "smtp") as server:
        busy = pool_with(first, server.port, max_connections=2, idle_timeout=30.0)
        await asyncio.gather(*(deliver(busy, n) for n in range(8)))
        assert first.held() == {first.key("target-1"): 2}  # both connections idle, both slots held
        late = pool_with(second, server.port, max_connections=2, idle_timeout=30.0)
        started = time.monotonic()
        await asyncio.wait_for(deliver(late, 99), timeout=15)
        assert time.monotonic() - started < 5, "the idle connections kept their slots"
        assert server.peak <= 2
        await busy.aclose()
        await late.aclose()
    first.close()
    second.close()
