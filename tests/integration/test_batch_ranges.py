"""Batches spread over workers: ranges of a batch sent by every executor that can take one.

Real servers: the counting SMTP server (each accepted message fsynced to its log), SQLite
files and PostgreSQL; a helper that dies is a real process killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailwright.config import Settings
from mailwright.engine import batch as batch_module
from mailwright.engine.executor import Executor
from mailwright.engine.ports import BatchSender
from mailwright.ledger import ranges as ranges_module
from mailwright.services.app import ActivityContexts, Services
from mailwright.services.batches import BatchSending
from mailwright.services.targets import TargetCreate, TargetUpdate
from mailwright.storage.tables import BatchRangeRow, RunStepRow
from tests.support.counting_smtp import CountingSMTPServer, FaultPlan

COUNT = 2000
RANGE = 250  # 8 ranges: enough for three workers to share
CONCURRENCY = 8
WAIT = 120.0  # generous bound on any one wait: the machine is shared


@pytest.fixture(autouse=True)
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranges_module, "RANGE_SIZE", RANGE)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    settings = Settings(home=tmp_path / "home", database_url=url) if url else Settings(home=tmp_path / "home")
    opened = Services(settings)
    yield opened
    opened.close()


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[CountingSMTPServer]:
    # A relay a few milliseconds away: a range takes long enough for the others to start.
    with CountingSMTPServer(tmp_path / "smtp", faults=FaultPlan(reply_delay=0.005)) as server:
        yield server


class CountingSenders:
    """The services' own batch sending, counting the messages this executor delivered."""

    def __init__(self, inner: BatchSending) -> None:
        self._inner = inner
        self.delivered = 0

    def for_batch(self, *, target: str, account_key: str | None) -> BatchSender[Any]:
        return _Counted(self, self._inner.for_batch(target=target, account_key=account_key))


class _Counted:
    def __init__(self, owner: CountingSenders, inner: Any) -> None:
        self._owner = owner
        self._inner = inner

    def prepare(self, inputs: dict[str, Any]) -> Any:
        return self._inner.prepare(inputs)

    def message_id_domain(self, message: Any) -> str:
        return str(self._inner.message_id_domain(message))

    def slot(self, message: Any, *, max_wait: float) -> Awaitable[None] | None:
        return self._inner.slot(message, max_wait=max_wait)  # type: ignore[no-any-return]

    async def deliver(
        self, message: Any, *, message_id: str, before_data: Callable[[], Awaitable[None]]
    ) -> dict[str, Any]:
        output: dict[str, Any] = await self._inner.deliver(
            message, message_id=message_id, before_data=before_data
        )
        self._owner.delivered += 1
        return output


def worker(mw: Services, name: str, *, lease: float = 5.0) -> tuple[Executor, CountingSenders]:
    """An executor as a worker process has one (its own id and lease), counting what it sends."""
    senders = CountingSenders(BatchSending(mw.targets))
    executor = Executor(
        mw.ledger,
        contexts=ActivityContexts(mw.targets, None),
        batches=senders,
        worker_id=name,
        lease=timedelta(seconds=lease),
    )
    return executor, senders


def store_batch(mw: Services, server: CountingSMTPServer, *, count: int = COUNT) -> str:
    mw.targets.create(
        TargetCreate(
            display_name="Counting",
            server="127.0.0.1",
            port=server.port,
            security="none",
            no_account_keys=True,
        )
    )
    lines = (
        (
            f"line {i + 1}",
            json.dumps({"from": "batch@example.org", "to": [f"r{i}@example.net"], "subject": f"#{i}"}),
        )
        for i in range(count)
    )
    return mw.batches.create(lines, target="Counting", concurrency=CONCURRENCY).run_id


def steps(mw: Services, run_id: str) -> list[RunStepRow]:
    with mw.db.session() as session:
        return list(session.scalars(select(RunStepRow).where(RunStepRow.run_id == run_id)).all())


def ranges(mw: Services, run_id: str) -> list[BatchRangeRow]:
    with mw.db.session() as session:
        query = select(BatchRangeRow).where(BatchRangeRow.run_id == run_id).order_by(BatchRangeRow.range_no)
        return list(session.scalars(query).all())


async def eventually(condition: Callable[[], bool], what: str, *, timeout: float = WAIT) -> None:
    """Poll `condition` (in a thread: it reads the database) until it holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


def assert_once_or_unknown(mw: Services, run_id: str, server: CountingSMTPServer) -> list[RunStepRow]:
    """Every message arrived exactly once, or its step says unknown; nothing arrived twice. The
    unknown steps."""
    rows = steps(mw, run_id)
    assert len(rows) == COUNT
    sent = {r.message_id for r in rows if r.status == "succeeded"}
    unknown = [r for r in rows if r.status == "unknown"]
    assert all(r.send_state == "sent" for r in rows if r.status == "succeeded")
    assert all(r.send_state == "unknown" for r in unknown)
    assert len(sent) + len(unknown) == COUNT  # nothing lost, nothing left open
    logged = server.log.counts()
    assert server.log.duplicates() == {}  # nothing sent twice
    assert sent <= set(logged)
    assert set(logged) <= sent | {r.message_id for r in unknown}
    return unknown


# --- spread over workers ------------------------------------------------------------------------


async def test_three_workers_share_a_batch_and_each_message_arrives_once(
    services: Services, counting: CountingSMTPServer
) -> None:
    mw = services
    run_id = store_batch(mw, counting)
    coordinator, coordinator_sent = worker(mw, "coordinator")
    helpers = [worker(mw, f"helper-{n}") for n in (1, 2)]
    hinted: list[tuple[str, int, list[tuple[str, str | None]]]] = []
    helping: list[asyncio.Task[Any]] = []

    def hint(hinted_run: str, open_ranges: int) -> None:
        # What the worker does with the hook: hint the run to other workers (here, run them).
        hinted.append((hinted_run, open_ranges, mw.runs.with_free_ranges()))
        loop = asyncio.get_running_loop()
        helping.extend(loop.create_task(executor.execute(hinted_run)) for executor, _ in helpers)

    coordinator.on_ranges_open = hint
    status = await asyncio.wait_for(coordinator.execute(run_id), WAIT)
    assert await asyncio.wait_for(asyncio.gather(*helping), WAIT) == [None, None]  # not theirs to report
    assert status == "succeeded"
    assert hinted == [(run_id, COUNT // RANGE, [(run_id, None)])]
    assert counting.log.wait_for_total(COUNT, timeout=WAIT) == COUNT
    assert assert_once_or_unknown(mw, run_id, counting) == []
    shares = [coordinator_sent.delivered, *(sent.delivered for _, sent in helpers)]
    assert sum(shares) == COUNT and all(share > 0 for share in shares), shares
    run = mw.runs.get(run_id)
    assert run.status == "succeeded" and run.step_counts == {"succeeded": COUNT}
    assert {r.status for r in ranges(mw, run_id)} == {"closed"}
    assert mw.runs.with_free_ranges() == []


async def test_a_worker_finds_nothing_to_help_with_in_a_run_that_is_no_batch_or_not_held(
    services: Services, counting: CountingSMTPServer
) -> None:
    mw = services
    run_id = store_batch(mw, counting, count=10)
    helper, sent = worker(mw, "helper")
    assert await helper.help(run_id) == 0  # queued, nobody coordinates it: nothing to help with
    assert ranges(mw, run_id) == []  # ranges are made by the coordinator
    # Executing a queued run claims it: the executor is its coordinator, and sends it all.
    assert await asyncio.wait_for(helper.execute(run_id), WAIT) == "succeeded"
    assert sent.delivered == 10 and await helper.help(run_id) == 0


# --- a helper that dies ---------------------------------------------------------------------------

HELPER = """
import asyncio, sys
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path

from mailwright.config import Settings
from mailwright.services.app import Services


async def main(home: str, run_id: str) -> None:
    services = Services(Settings(home=Path(home)))
    executor = services.executor(worker_id="killed-helper", lease=timedelta(seconds=2), with_files=False)
    while True:  # as a worker handed hints over and over
        await executor.execute(run_id)
        await asyncio.sleep(0.05)


asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def held_by(mw: Services, run_id: str, owner: str) -> BatchRangeRow | None:
    return next((r for r in ranges(mw, run_id) if r.lease_owner == owner and r.status == "open"), None)


def sending_in(mw: Services, run_id: str, held: BatchRangeRow) -> int:
    rows = steps(mw, run_id)
    return sum(
        1
        for r in rows
        if r.send_state == "sending" and r.item_index is not None
        if held.first_index <= r.item_index < held.end_index
    )


async def test_a_helper_killed_mid_range_is_taken_over_and_nothing_is_sent_twice(
    services: Services, tmp_path: Path, counting: CountingSMTPServer
) -> None:
    mw = services
    run_id = store_batch(mw, counting)
    coordinator, _ = worker(mw, "coordinator", lease=2.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    if mw.settings.database_url:
        env["MAILWRIGHT_DATABASE_URL"] = mw.settings.database_url
    started: list[subprocess.Popen[bytes]] = []
    log = (tmp_path / "helper.log").open("wb")

    def hint(hinted_run: str, open_ranges: int) -> None:
        command = [sys.executable, "-c", HELPER, str(tmp_path / "home"), hinted_run]
        started.append(subprocess.Popen(command, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL))

    coordinator.on_ranges_open = hint
    running = asyncio.create_task(coordinator.execute(run_id))
    try:
        await eventually(
            lambda: bool(started) and held_by(mw, run_id, "killed-helper") is not None, "it helps"
        )
        held = await asyncio.to_thread(held_by, mw, run_id, "killed-helper")
        assert held is not None
        await eventually(lambda: sending_in(mw, run_id, held) > 0, "the helper is sending")
        started[0].send_signal(signal.SIGKILL)  # mid-range, with messages in flight
        started[0].wait(timeout=30)
        status = await asyncio.wait_for(running, WAIT)
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        log.close()
    unknown = assert_once_or_unknown(mw, run_id, counting)
    # The killed helper's messages in flight (marked sending, their results not yet written) are
    # the only unknown ones: at most two per sender (one in flight, one recorded not yet written).
    assert 1 <= len(unknown) <= 2 * CONCURRENCY
    assert all(held.first_index <= (r.item_index or 0) < held.end_index for r in unknown)
    assert all("the worker stopped after DATA began" in r.notes[-1] for r in unknown)
    assert status == "failed"  # the unknown outcomes are reported, as for a crash of a single worker
    run = mw.runs.get(run_id)
    assert run.error is not None and run.error["code"] == "outcome_unknown"
    taken = next(r for r in ranges(mw, run_id) if r.range_no == held.range_no)
    assert taken.status == "closed" and taken.lease_epoch > held.lease_epoch  # taken over, then sealed


# --- cancel ----------------------------------------------------------------------------------------


async def test_helpers_honour_a_cancel_and_the_coordinator_waits_for_them(
    services: Services, counting: CountingSMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_module, "PAGE", 25)  # a cancel is seen between pages
    mw = services
    run_id = store_batch(mw, counting)
    coordinator, _ = worker(mw, "coordinator")
    helper, helper_sent = worker(mw, "helper")
    helping: list[asyncio.Task[Any]] = []
    coordinator.on_ranges_open = lambda hinted_run, _: helping.append(
        asyncio.get_running_loop().create_task(helper.execute(hinted_run))
    )
    running = asyncio.create_task(coordinator.execute(run_id))
    await eventually(lambda: helper_sent.delivered >= 50 and counting.log.total() >= 200, "both send")
    mw.runs.cancel(run_id)
    assert await asyncio.wait_for(running, WAIT) == "cancelled"
    # The run ended only once the helper had let its range go (sealing waits for that).
    assert helping and await asyncio.wait_for(helping[0], WAIT) is None
    rows = steps(mw, run_id)
    sent = {r.message_id for r in rows if r.status == "succeeded"}
    assert {r.status for r in rows} == {"succeeded", "cancelled"}
    assert 200 <= len(sent) < COUNT
    assert counting.log.total() == len(sent) and counting.log.duplicates() == {}
    assert set(counting.log.counts()) == sent
    assert {r.status for r in ranges(mw, run_id)} == {"closed"}
    assert await helper.help(run_id) == 0  # a cancelled run is helped no more


# --- rate limits -----------------------------------------------------------------------------------


async def test_a_helper_held_back_by_a_rate_limit_leaves_the_deferral_to_the_coordinator(
    mw: Services, counting: CountingSMTPServer
) -> None:
    budget = 600  # messages per day: spent inside the third range
    run_id = store_batch(mw, counting)
    mw.targets.update("Counting", TargetUpdate(rate_per_day=budget))
    coordinator, coordinator_sent = worker(mw, "coordinator")
    helper, helper_sent = worker(mw, "helper")
    helping: list[asyncio.Task[Any]] = []
    coordinator.on_ranges_open = lambda hinted_run, _: helping.append(
        asyncio.get_running_loop().create_task(helper.execute(hinted_run))
    )
    assert await asyncio.wait_for(coordinator.execute(run_id), WAIT) == "queued"  # deferred, not failed
    assert helping and await asyncio.wait_for(helping[0], WAIT) is None
    assert helper_sent.delivered > 0 and coordinator_sent.delivered + helper_sent.delivered == budget
    assert counting.log.total() == budget and counting.log.duplicates() == {}
    run = mw.runs.get(run_id)
    assert run.status == "queued" and run.not_before is not None
    tomorrow = datetime.combine(datetime.now(UTC).date() + timedelta(days=1), dt_time(0, 0), UTC)
    assert abs((run.not_before - tomorrow).total_seconds()) < 1  # when the day's budget is new
    counts = run.step_counts
    assert counts is not None and counts["succeeded"] == budget and "failed" not in counts
    assert counts.get("deferred", 0) >= 1 and sum(counts.values()) == COUNT
    held_back = [r for r in steps(mw, run_id) if r.status == "deferred"]
    assert all(any("per day" in note for note in r.notes) for r in held_back)
    # Nobody holds a range, and none is offered to helpers while the run waits for tomorrow.
    assert all(r.lease_owner is None for r in ranges(mw, run_id))
    assert mw.runs.with_free_ranges() == [] and await helper.help(run_id) == 0
