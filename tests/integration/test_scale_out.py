"""Workers on many machines, for real: worker processes on RabbitMQ (a private server) and a
shared database, killed with SIGKILL, a broker restarted, pools routed, hints lost.

Each worker is a `mailwright worker` process; mail goes to the counting SMTP server, whose
fsynced log says what arrived and how many times.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mailwright.config import Settings
from mailwright.services.app import Services
from mailwright.services.batches import BatchCreated
from mailwright.services.sending import SendEmailRequest
from mailwright.services.targets import TargetCreate
from tests.integration.test_shared_limits import most_in_any_window
from tests.security.serveproc import ServeProcess
from tests.support.announcer import AnnouncerThread
from tests.support.counting_smtp import CountingSMTPProcess, CountingSMTPServer, FaultPlan
from tests.support.rabbitmq import RabbitMQServer

MAILWRIGHT = str(Path(sys.executable).parent / "mailwright")
FINISHED = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    with RabbitMQServer(tmp_path_factory.mktemp("rabbitmq")) as server:
        yield server


class Cluster:
    """A database (SQLite file or PostgreSQL), the broker, and the worker processes started on them."""

    def __init__(self, home: Path, broker: str, database_url: str | None, lease: float = 3.0) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
        self.env.update(
            MAILWRIGHT_HOME=str(home), MAILWRIGHT_BROKER=broker, MAILWRIGHT_LEASE_SECONDS=str(lease)
        )
        if database_url:
            self.env["MAILWRIGHT_DATABASE_URL"] = database_url
        # Queues runs; executes none.
        self.services = Services(
            Settings(home=home, broker=broker, lease_seconds=lease, database_url=database_url)
        )
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self._announcer: AnnouncerThread | None = None

    def announce(self) -> None:
        """From now on, announce each run queued here on RabbitMQ, as `serve --no-worker` does."""
        self._announcer = AnnouncerThread(self.services).start()

    def worker(self, *args: str) -> subprocess.Popen[bytes]:
        log = self.home / f"worker{len(self.workers)}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [MAILWRIGHT, "worker", *args], env=self.env, stdout=out, stderr=out, stdin=subprocess.DEVNULL
            )
        self.workers.append(process)
        self.logs.append(log)
        return process

    def log_text(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in self.logs)

    def relay(self, name: str, port: int, **settings: object) -> None:
        fields = {"display_name": name, "server": "127.0.0.1", "port": port, "security": "none"}
        self.services.targets.create(
            TargetCreate.model_validate({**fields, **settings, "no_account_keys": True})
        )

    def send(self, target: str, n: int, *, tag: str = "m") -> list[str]:
        return [
            self.services.runs.start_send_email(
                SendEmailRequest.model_validate(
                    {
                        "target": target,
                        "from": "ops@example.org",
                        "to": [f"{tag}{i}@example.net"],
                        "subject": f"{tag}{i}",
                    }
                )
            ).id
            for i in range(n)
        ]

    def batch(self, target: str, total: int) -> BatchCreated:
        """A batch of `total` messages to `target`, stored and queued (announced, if announcing)."""
        lines = (
            (f"line {i + 1}", {"to": [f"r{i}@example.net"], "from": "ops@example.org", "subject": f"#{i}"})
            for i in range(total)
        )
        return self.services.batches.create(lines, target=target)

    def wait_finished(self, runs: list[str], *, timeout: float = 300.0) -> Counter[str]:
        deadline = time.monotonic() + timeout
        while True:
            statuses = Counter(self.services.runs.status(r) for r in runs)
            if sum(statuses[s] for s in FINISHED) == len(runs):
                return statuses
            assert time.monotonic() < deadline, f"not finished: {statuses}\n{self.log_text()}"
            time.sleep(0.25)

    def close(self) -> None:
        if self._announcer is not None:
            self._announcer.stop()
        for process in self.workers:
            if process.poll() is None:
                process.terminate()
        for process in self.workers:
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        self.services.close()


@pytest.fixture
def cluster_factory(tmp_path: Path, rabbit: RabbitMQServer) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(*, database_url: str | None = None, broker: str | None = None, lease: float = 3.0) -> Cluster:
        cluster = Cluster(tmp_path / f"home{len(made)}", broker or rabbit.url, database_url, lease)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[CountingSMTPServer]:
    with CountingSMTPServer(tmp_path / "smtp") as server:
        yield server


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_pools_are_routed_and_a_pool_without_worker_says_so(
    cluster_factory: Callable[..., Cluster], counting: CountingSMTPServer
) -> None:
    cluster = cluster_factory()
    cluster.announce()
    cluster.relay("Outside", counting.port)
    cluster.relay("Inside", counting.port, worker_pool="dmz")
    cluster.worker()
    _wait(lambda: len(cluster.services.workers.live()) == 1, "the default worker")
    outside = cluster.send("Outside", 3, tag="out")
    inside = cluster.send("Inside", 3, tag="in")
    assert cluster.wait_finished(outside) == Counter({"succeeded": 3})
    # No worker of pool dmz: its runs wait, and say why, in the services, the CLI and the API's model.
    time.sleep(2.0)  # the default worker had every chance to (wrongly) take them
    for run_id in inside:
        run = cluster.services.runs.get(run_id)
        assert run.status == "queued" and run.pool == "dmz"
        assert run.waiting is not None and "waiting for a worker in pool 'dmz'" in run.waiting
    shown = subprocess.run(
        [MAILWRIGHT, "runs", "show", inside[0]], env=cluster.env, capture_output=True, text=True, check=True
    )
    assert "waiting for a worker in pool 'dmz'" in shown.stdout
    cluster.worker("--pool", "dmz")
    assert cluster.wait_finished(inside) == Counter({"succeeded": 3})
    # Each run was executed by a worker of its own pool: the dmz worker's log names only dmz runs.
    dmz_log = cluster.logs[1].read_text()
    default_log = cluster.logs[0].read_text()
    assert all(f"run {r} succeeded" in dmz_log for r in inside)
    assert not any(f"run {r} " in dmz_log for r in outside)
    assert not any(f"run {r} succeeded" in default_log for r in inside)
    listed = subprocess.run(
        [MAILWRIGHT, "workers", "list"], env=cluster.env, capture_output=True, text=True, check=True
    ).stdout
    assert "dmz" in listed and "(default)" in listed and "amqp" in listed
    assert counting.log.total() == 6 and not counting.log.duplicates()


def test_a_lost_queue_message_is_found_by_the_sweeper(
    cluster_factory: Callable[..., Cluster], counting: CountingSMTPServer
) -> None:
    cluster = cluster_factory()
    cluster.relay("Relay", counting.port)
    # The services queue runs without announcing them (on_queued is unset): every hint is "lost".
    runs = cluster.send("Relay", 5)
    cluster.worker()
    started = time.monotonic()
    assert cluster.wait_finished(runs, timeout=120) == Counter({"succeeded": 5})
    took = time.monotonic() - started
    assert "sweeper: announced" in cluster.logs[0].read_text()
    assert took < 60, f"the sweeper took {took:.1f} s"
    assert counting.log.total() == 5 and not counting.log.duplicates()


def test_three_workers_sigkilled_mid_batch_lose_nothing(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, pg_url: str
) -> None:
    """2,000 messages, three workers; one SIGKILLed at ~30 %, another at ~70 %, both restarted."""
    total = 2000
    with CountingSMTPServer(tmp_path / "slow", faults=FaultPlan(reply_delay=0.002)) as server:
        cluster = cluster_factory(database_url=pg_url)
        cluster.env["MAILWRIGHT_BATCH_RANGE_SIZE"] = "100"  # 20 ranges: every worker gets a share
        cluster.announce()
        cluster.relay("Relay", server.port)
        batch = cluster.batch("Relay", total)
        for _ in range(3):
            cluster.worker("--concurrency", "8")
        _wait(lambda: server.log.total() >= total * 0.3, "30 % of the batch", timeout=300)
        cluster.workers[0].send_signal(signal.SIGKILL)
        cluster.workers[0].wait(timeout=30)
        first_kill = server.log.total()
        cluster.worker("--concurrency", "8")
        _wait(lambda: server.log.total() >= total * 0.7, "70 % of the batch", timeout=300)
        cluster.workers[1].send_signal(signal.SIGKILL)
        cluster.workers[1].wait(timeout=30)
        second_kill = server.log.total()
        cluster.worker("--concurrency", "8")
        assert cluster.wait_finished([batch.run_id], timeout=600)
        run = cluster.services.runs.get(batch.run_id)
        counts = run.step_counts or {}
        unknown = counts.get("unknown", 0)
        arrived = server.log.counts()
        duplicates = {mid: n for mid, n in arrived.items() if n > 1}
        print(
            f"\nthree workers, {total} messages: killed at {first_kill} and {second_kill}; "
            f"{counts}; {len(arrived)} distinct arrived, {len(duplicates)} twice, {unknown} unknown"
        )
        assert counts.get("succeeded", 0) + unknown == total, (counts, cluster.log_text())
        assert not duplicates  # an unknown step is never sent again on its own
        assert len(arrived) >= total - unknown  # every message not unknown arrived
        # At most what two killed workers had in flight: 8 connections (the target's cap) x 4 messages.
        assert unknown <= 2 * 8 * 4
        # The batch was spread: more than one worker process sent its messages (each send is logged
        # as it happens; a killed worker never writes the summary line of its ranges).
        sending = [log for log in cluster.logs if "via 'Relay'" in log.read_text()]
        assert len(sending) >= 2, cluster.log_text()


def test_rabbitmq_restarted_mid_run_loses_nothing(
    cluster_factory: Callable[..., Cluster], counting: CountingSMTPServer, tmp_path: Path
) -> None:
    with RabbitMQServer(tmp_path / "own-rabbitmq") as own:
        cluster = cluster_factory(broker=own.url)
        cluster.announce()
        cluster.relay("Relay", counting.port)
        cluster.worker()
        cluster.worker()
        _wait(lambda: len(cluster.services.workers.live()) == 2, "two workers")
        before = cluster.send("Relay", 100, tag="before")
        own.stop()  # runs queued meanwhile are announced by nobody: the sweeper finds them
        during = cluster.send("Relay", 100, tag="during")
        own.start()
        after = cluster.send("Relay", 100, tag="after")
        statuses = cluster.wait_finished(before + during + after, timeout=300)
        assert statuses == Counter({"succeeded": 300}), cluster.log_text()
        assert counting.log.total() == 300 and not counting.log.duplicates()
        assert all(w.poll() is None for w in cluster.workers), "a worker died with the broker"


def test_send_with_wait_on_a_host_without_worker_is_woken_through_redis(
    cluster_factory: Callable[..., Cluster], counting: CountingSMTPServer, pg_url: str, redis_url: str
) -> None:
    """`serve --no-worker` queues (announcing on RabbitMQ); a worker elsewhere sends; Redis wakes
    the waiting request: faster than the 0.25 s look at the run's row the wait falls back on."""
    cluster = cluster_factory(database_url=pg_url)
    cluster.env["MAILWRIGHT_REDIS_URL"] = redis_url
    cluster.relay("Relay", counting.port)
    token = cluster.services.tokens.create("tests").token
    cluster.worker()
    _wait(lambda: len(cluster.services.workers.live()) == 1, "the worker")
    env = {k: v for k, v in cluster.env.items() if k.startswith("MAILWRIGHT_") and k != "MAILWRIGHT_HOME"}
    with ServeProcess(cluster.home, "--no-worker", "--no-sandbox", env=env) as serve:
        headers = {"Authorization": f"Bearer {token}"}
        message = {"target": "Relay", "from": "ops@example.org", "to": ["bob@example.net"], "subject": "w"}
        took = []
        with httpx.Client(base_url=serve.base_url, headers=headers, timeout=60) as client:
            for _ in range(15):
                started = time.perf_counter()
                answer = client.post("/api/v1/send-email", json=message)
                took.append(time.perf_counter() - started)
                assert answer.status_code == 200 and answer.json()["status"] == "sent", answer.text
    median = statistics.median(took[1:])  # the first opens the connections
    print(f"\nsend with wait across processes: median {median * 1000:.1f} ms over {len(took) - 1}")
    assert median < 0.2, f"not woken by Redis: median {median:.3f} s"
    assert counting.log.total() == 15 and not counting.log.duplicates()


@pytest.fixture
def counting_apart(tmp_path: Path) -> Iterator[CountingSMTPProcess]:
    """The counting server in a process of its own: the arrival times it records are not held up
    by this test process's own work (its threads share one interpreter lock)."""
    with CountingSMTPProcess(tmp_path / "smtp-apart") as server:
        yield server


def test_a_rate_limit_holds_over_three_workers_sharing_a_batch(
    cluster_factory: Callable[..., Cluster], counting_apart: CountingSMTPProcess, pg_url: str, redis_url: str
) -> None:
    """20 messages a second for the target, three `mailwright worker`s sending ranges of one batch:
    the counting server never sees more than 20 in any one-second window, and nothing fails."""
    total = 150
    cluster = cluster_factory(database_url=pg_url)
    cluster.env.update(MAILWRIGHT_REDIS_URL=redis_url, MAILWRIGHT_BATCH_RANGE_SIZE="25")
    cluster.announce()
    cluster.relay("Limited", counting_apart.port, rate_per_second=20)
    for _ in range(3):
        cluster.worker()
    _wait(lambda: len(cluster.services.workers.live()) == 3, "three workers")
    batch = cluster.batch("Limited", total)
    assert cluster.wait_finished([batch.run_id], timeout=300) == Counter({"succeeded": 1})
    arrived = counting_apart.log.messages()
    assert len(arrived) == total and not counting_apart.log.duplicates()
    times = sorted(m.time for m in arrived)
    assert most_in_any_window(times) <= 20, times
    assert times[-1] - times[0] >= (total - 20) / 20  # the limit was shared, not per worker
    senders = [log for log in cluster.logs if "via 'Limited'" in log.read_text()]
    assert len(senders) >= 2, cluster.log_text()  # the batch was spread over workers
