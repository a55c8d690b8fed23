"""The fault matrix: real worker processes, a counting SMTP server in its own process, SQLite and PostgreSQL.

Each case runs a batch through `mailwright worker` or `mailwright send-batch` processes
against `tests.support.counting_smtp` (every accepted message fsynced to a log before its
250, so what arrived and how often is known whatever happens to the senders) and breaks
something: SIGKILL mid-batch, SIGSTOP past the lease, a lease renewal that fails once,
connections dropped around the store, 4xx at RCPT, a reply after the end-of-data timeout.

Then the promise of README "Never losing or doubling a message" is checked on the steps
and the server's log: nothing lost (each step succeeded with its Message-ID counted by the
server, or failed as the case expects, or is `unknown`), and no Message-ID counted twice,
not even among the unknown, until `mailwright runs retry RUN --include-unknown` is asked
for; after that every message has arrived and only the unknown ones may be there twice.

One line per case is printed (`-s`), and a table of all of them at the end of the session.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from mailwright.config import Settings
from mailwright.secrets import generate_key
from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate
from mailwright.storage.tables import RunRow, RunStepRow
from tests.support.cli import MAILWRIGHT
from tests.support.counting_smtp import CountingSMTPProcess, FaultPlan, Pick, RcptDefer, SlowReply

pytestmark = pytest.mark.timeout(300)

# The same server `make test` starts (scripts/install-system-deps.sh) and tests/integration uses.
POSTGRES_ADMIN_URL = os.environ.get(
    "MAILWRIGHT_TEST_POSTGRES_URL", "postgresql+psycopg://mailwright:mailwright@127.0.0.1:5432/postgres"
)
BACKENDS = ("sqlite", "postgresql")
LEASE = 3.0  # MAILWRIGHT_LEASE_SECONDS of the workers, unless a case says otherwise
WAIT = 120.0  # generous deadline of every wait on another process (a loaded 2-CPU machine)
UNKNOWN_NOTE = "may or may not have been delivered"
TERMINAL = ("succeeded", "failed", "cancelled")


# --------------------------------------------------------------------------------------
# The table printed at the end of the session
# --------------------------------------------------------------------------------------

CASES = (
    "kill -9 send-batch at 30%",
    "kill -9 worker at 70%",
    "SIGSTOP past the lease",
    "renewal fails once",
    "drop after store",
    "drop before store",
    "4xx at RCPT",
    "reply after timeout",
)


@dataclass
class Row:
    backend: str
    case: str
    messages: int
    delivered: int
    duplicates: int
    unknown: int
    failed: int
    after_retry: str = "-"
    seconds: float = 0.0
    note: str = ""


class _TableReport:
    """Prints the collected rows in pytest's terminal summary (shown with or without -s)."""

    HEADER = (
        "backend",
        "case",
        "messages",
        "delivered",
        "duplicates",
        "unknown",
        "failed",
        "after retry --include-unknown",
        "seconds",
        "note",
    )

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.rows:
            return
        order = {case: n for n, case in enumerate(CASES)}
        rows = sorted(self.rows, key=lambda r: (order.get(r.case, 99), BACKENDS.index(r.backend)))
        cells = [self.HEADER] + [
            (
                r.backend,
                r.case,
                str(r.messages),
                str(r.delivered),
                str(r.duplicates),
                str(r.unknown),
                str(r.failed),
                r.after_retry,
                f"{r.seconds:.1f}",
                r.note,
            )
            for r in rows
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.HEADER))]
        terminalreporter.section("fault matrix (tests/e2e/test_fault_matrix.py)")
        for n, row in enumerate(cells):
            terminalreporter.write_line(
                " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
            )
            if n == 0:
                terminalreporter.write_line("-+-".join("-" * w for w in widths))


@pytest.fixture(scope="session")
def fault_table(request: pytest.FixtureRequest) -> _TableReport:
    name = "mailwright-fault-matrix-table"
    plugin = request.config.pluginmanager.get_plugin(name)
    if plugin is None:
        plugin = _TableReport()
        request.config.pluginmanager.register(plugin, name)
    assert isinstance(plugin, _TableReport)
    return plugin


# --------------------------------------------------------------------------------------
# Processes and the database
# --------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} (pid {self.pid}, exit {self.popen.poll()}) ---\n{self.text()[-chars:]}"

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=WAIT)

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, in case it is stopped); SIGKILL if it does not end in time."""
        if not self.alive():
            return
        os.kill(self.pid, signal.SIGCONT)
        self.popen.terminate()
        try:
            self.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=WAIT)


@dataclass
class Tally:
    """What a check of the promise found, for the assertions and the table."""

    messages: int
    delivered: int  # distinct Message-IDs of the run(s) counted by the server
    duplicates: set[str]  # Message-IDs counted more than once
    unknown: set[str]  # Message-IDs of the steps recorded unknown
    failed: int
    counts: Counter[str] = field(default_factory=Counter)


class Matrix:
    """One case's world: a Mailwright home and database, the counting server, the processes started."""

    def __init__(
        self, root: Path, backend: str, database_url: str | None, server: CountingSMTPProcess
    ) -> None:
        self.root = root
        self.backend = backend
        self.database_url = database_url
        self.server = server
        self.home = root / "home"
        self.secret_key = generate_key()
        self.services = Services(
            Settings(home=self.home, database_url=database_url, secret_key=self.secret_key)
        )
        self.processes: list[Proc] = []
        self.started = time.monotonic()

    # ---- processes ----

    def env(self, lease: float = LEASE) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
        env.update(
            MAILWRIGHT_HOME=str(self.home),
            MAILWRIGHT_SECRET_KEY=self.secret_key,
            MAILWRIGHT_LEASE_SECONDS=str(lease),
        )
        if self.database_url is not None:
            env["MAILWRIGHT_DATABASE_URL"] = self.database_url
        return env

    def spawn(self, name: str, *args: str, lease: float = LEASE) -> Proc:
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [str(MAILWRIGHT), *args],
                env=self.env(lease),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        proc = Proc(name, popen, log)
        self.processes.append(proc)
        return proc

    def worker(self, name: str, *, lease: float = LEASE) -> Proc:
        return self.spawn(name, "worker", lease=lease)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(MAILWRIGHT), *args],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.processes)

    def close(self) -> None:
        for proc in self.processes:
            proc.stop()
        self.services.close()

    # ---- the target and the batches ----

    def target(self, **settings: Any) -> str:
        self.services.targets.create(
            TargetCreate(
                display_name="Counting",
                server="127.0.0.1",
                port=self.server.port,
                security="none",
                no_account_keys=True,
                connect_timeout=10,
                command_timeout=30,
                **settings,
            )
        )
        return "Counting"

    @staticmethod
    def message(i: int, *, to: str | None = None) -> dict[str, Any]:
        return {
            "from": "batch@example.org",
            "to": [to or f"r{i}@example.net"],
            "subject": f"fault matrix #{i}",
            "body": f"message {i}",
        }

    def batch(self, count: int, *, concurrency: int, to: Callable[[int], str | None] = lambda i: None) -> str:
        """A batch stored through Services (queued: a worker takes it)."""
        lines = ((f"line {i + 1}", json.dumps(self.message(i, to=to(i)))) for i in range(count))
        return self.services.batches.create(lines, target="Counting", concurrency=concurrency).run_id

    def batch_file(self, count: int) -> Path:
        path = self.root / "messages.jsonl"
        path.write_text("".join(json.dumps(self.message(i)) + "\n" for i in range(count)), encoding="utf-8")
        return path

    # ---- reading the database ----

    def run(self, run_id: str) -> RunRow:
        with self.services.db.session() as session:
            row = session.get(RunRow, run_id)
            assert row is not None, f"no run {run_id}"
            session.expunge(row)
            return row

    def only_run(self) -> str:
        with self.services.db.session() as session:
            ids = list(session.scalars(sa.select(RunRow.id)))
        assert len(ids) == 1, ids
        return ids[0]

    def steps(self, run_id: str) -> list[RunStepRow]:
        with self.services.db.session() as session:
            rows = list(session.scalars(sa.select(RunStepRow).where(RunStepRow.run_id == run_id)))
            for row in rows:
                session.expunge(row)
            return rows

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not within {timeout:.0f} s "
                    f"(the server stored {self.server.log.total()})\n{self.logs()}"
                )
            time.sleep(0.05)

    def wait_finished(self, run_id: str, timeout: float = WAIT) -> RunRow:
        self.wait_until(lambda: self.run(run_id).status in TERMINAL, f"run {run_id} finished", timeout)
        return self.run(run_id)

    def wait_stored(self, count: int) -> int:
        self.wait_until(lambda: self.server.log.total() >= count, f"{count} messages stored")
        return self.server.log.total()


def lease_expiry(run: RunRow) -> float:
    """The run's lease expiry as a Unix time (SQLite gives it back without a zone)."""
    assert run.lease_expires_at is not None
    expires: datetime = run.lease_expires_at
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return expires.timestamp()


@pytest.fixture
def postgres_database() -> Iterator[Callable[[], str]]:
    """Fresh PostgreSQL databases on demand, dropped afterwards; fails (never skips) when unreachable."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def create() -> str:
        name = f"mw_fault_{uuid.uuid4().hex[:12]}"
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        except sa.exc.OperationalError as exc:
            pytest.fail(
                f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: run "
                f"`bash scripts/install-system-deps.sh` as root (`make test` does), "
                f"or set MAILWRIGHT_TEST_POSTGRES_URL ({exc})",
                pytrace=False,
            )
        created.append(name)
        return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    yield create
    if created:
        with admin.connect() as conn:
            for name in created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        request.applymarker(pytest.mark.postgres)
    return str(request.param)


@contextmanager
def open_matrix(root: Path, backend: str, postgres_database: Callable[[], str]) -> Iterator[Matrix]:
    database_url = postgres_database() if backend == "postgresql" else None
    server = CountingSMTPProcess(root / "smtp").start()
    try:
        world = Matrix(root, backend, database_url, server)
        try:
            yield world
        finally:
            world.close()
    finally:
        server.stop()


@pytest.fixture
def matrix(tmp_path: Path, backend: str, postgres_database: Callable[[], str]) -> Iterator[Matrix]:
    with open_matrix(tmp_path, backend, postgres_database) as world:
        yield world


def holds_a_transaction(m: Matrix) -> bool:
    """Whether a process holds a write transaction on the runs: SQLite's write lock, or on
    PostgreSQL an open transaction that updated a run or a batch's range (the lease fence
    locks its row: a batch's step writes are fenced by the range's lease, ledger/ranges.py)."""
    if m.database_url is None:
        probe = sqlite3.connect(m.home / "mailwright.db", timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")  # fails at once while another holds the write lock
        except sqlite3.OperationalError:
            return True
        finally:
            if probe.in_transaction:
                probe.execute("ROLLBACK")
            probe.close()
        return False
    engine = sa.create_engine(m.database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as monitor:
            holders = monitor.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                    "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() "
                    "AND a.xact_start IS NOT NULL "
                    "AND l.relation IN ('runs'::regclass, 'batch_ranges'::regclass) "
                    "AND l.mode = 'RowExclusiveLock'"
                )
            ).scalar_one()
            return bool(holders)
    finally:
        engine.dispose()


def sigstop(m: Matrix, proc: Proc, *, in_transaction: bool) -> int:
    """SIGSTOP `proc` at a moment it holds a write transaction on the runs (or none); returns the tries.

    A process frozen inside a transaction keeps its locks: on SQLite the write lock, on
    PostgreSQL the run's row (the lease fence). See
    `test_bug_a_worker_frozen_inside_a_transaction_blocks_the_takeover` for what that does.
    """
    for tries in range(1, 2001):
        os.kill(proc.pid, signal.SIGSTOP)
        # Asked twice: a statement sent just before the stop may still have been on its way.
        if holds_a_transaction(m) == in_transaction and holds_a_transaction(m) == in_transaction:
            return tries
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.01 * (tries % 3))  # another phase of its cycle of writes
    raise AssertionError(
        f"could not stop {proc.name} {'inside' if in_transaction else 'outside'} a transaction"
    )


# --------------------------------------------------------------------------------------
# The promise
# --------------------------------------------------------------------------------------

FailureCheck = Callable[[RunStepRow], bool]


def no_failure(_row: RunStepRow) -> bool:
    return False


def check_promise(
    m: Matrix,
    run_ids: list[str],
    *,
    expected_failure: FailureCheck = no_failure,
    unknown_before: set[str] | None = None,
) -> Tally:
    """0 lost, and duplicates only among the unknown (none at all before a retry)."""
    rows = [row for run_id in run_ids for row in m.steps(run_id)]
    counts = m.server.log.counts()
    ids = [row.message_id for row in rows]
    assert None not in ids and len(set(ids)) == len(rows), "each step has its own Message-ID"
    stray = set(counts) - set(ids)
    assert not stray, f"the server counted Message-IDs of no step: {sorted(stray)[:5]}"
    problems: list[str] = []
    for row in rows:
        mid = row.message_id
        what = (
            f"step {row.item_index} {mid} status={row.status} send_state={row.send_state} error={row.error}"
        )
        if row.status == "succeeded":
            if row.send_state != "sent" or counts[mid or ""] < 1:
                problems.append(f"LOST (succeeded but not counted by the server): {what}")
        elif row.status == "unknown":
            if row.send_state != "unknown" or not any(UNKNOWN_NOTE in note for note in row.notes):
                problems.append(f"unknown without its send state or note: {what} notes={row.notes}")
        elif row.status == "failed":
            if not expected_failure(row):
                problems.append(f"failed for a reason this case does not expect: {what}")
            elif row.send_state is not None:
                problems.append(f"failed but its send state says it may have been sent: {what}")
        else:
            problems.append(f"not finished (a stall?): {what}")
    assert not problems, "\n".join(problems[:20]) + f"\n{m.logs()}"
    unknown = {row.message_id or "" for row in rows if row.status == "unknown"}
    doubled = {mid for mid, n in counts.items() if n > 1}
    if unknown_before is None:
        assert not doubled, f"counted more than once before any retry: {sorted(doubled)}"
    else:
        assert doubled <= unknown_before, (
            f"sent twice, not recorded unknown: {sorted(doubled - unknown_before)}"
        )
    for run_id in run_ids:
        run = m.run(run_id)
        run_rows = [row for row in rows if row.run_id == run_id]
        if all(row.status == "succeeded" for row in run_rows):
            assert run.status == "succeeded", (run.status, run.error)
        else:
            assert run.status == "failed", (run.status, run.error)
            if not any(row.status == "failed" for row in run_rows):
                assert run.error is not None and run.error.get("code") == "outcome_unknown", run.error
    return Tally(
        messages=len(rows),
        delivered=sum(1 for mid in ids if counts[mid or ""] > 0),
        duplicates=doubled,
        unknown=unknown,
        failed=sum(row.status == "failed" for row in rows),
        counts=counts,
    )


def retry_unknown(m: Matrix, run_id: str, before: Tally) -> str:
    """`runs retry --include-unknown` with no faults; every message then arrived, twice only if unknown."""
    if not before.unknown:
        return "-"
    m.server.set_faults(FaultPlan())
    result = m.cli("runs", "retry", run_id, "--include-unknown")
    assert result.returncode == 0, (result.stdout, result.stderr)
    if not any(p.alive() for p in m.processes if "worker" in p.name):
        m.worker("worker-retry")
    run = m.wait_finished(run_id)
    after = check_promise(m, [run_id], unknown_before=before.unknown)
    assert run.status == "succeeded", (run.status, run.error)
    assert after.delivered == after.messages == before.messages, "after the retry every message arrived"
    assert after.unknown == set() and after.failed == 0
    return f"{len(before.unknown)} resent: {after.delivered} delivered, {len(after.duplicates)} twice"


def report(
    m: Matrix, table: _TableReport, case: str, tally: Tally, *, after_retry: str = "-", note: str = ""
) -> None:
    row = Row(
        backend=m.backend,
        case=case,
        messages=tally.messages,
        delivered=tally.delivered,
        duplicates=len(tally.duplicates),
        unknown=len(tally.unknown),
        failed=tally.failed,
        after_retry=after_retry,
        seconds=time.monotonic() - m.started,
        note=note,
    )
    table.rows.append(row)
    print(
        f"\nfault matrix: backend={row.backend} case={row.case!r} messages={row.messages} "
        f"delivered={row.delivered} duplicates={row.duplicates} unknown={row.unknown} failed={row.failed} "
        f"after_retry={row.after_retry!r} seconds={row.seconds:.1f} note={row.note!r}"
    )


# --------------------------------------------------------------------------------------
# 1. kill -9 mid-batch, then a fresh worker finishes it
# --------------------------------------------------------------------------------------

KILL_BATCH = 400
KILL_CONCURRENCY = 8
SLOW = FaultPlan(reply_delay=0.05)  # about 2 replies of 50 ms per message: <= 80 msg/s at concurrency 8


def _finish_after_kill(m: Matrix, run_id: str, table: _TableReport, case: str) -> None:
    killed_at = m.server.log.total()
    assert 0 < killed_at < KILL_BATCH, f"the kill should land mid-batch, not after {killed_at}\n{m.logs()}"
    m.server.set_faults(FaultPlan())  # the rest may go fast
    m.worker("worker-fresh")
    run = m.wait_finished(run_id)
    tally = check_promise(m, [run_id])
    assert run.status == ("failed" if tally.unknown else "succeeded"), (run.status, run.error)
    # At most the messages in flight when the process died: one per sender.
    assert len(tally.unknown) <= KILL_CONCURRENCY, tally.unknown
    assert tally.delivered + len(tally.unknown - {mid for mid, n in tally.counts.items() if n}) == KILL_BATCH
    after = retry_unknown(m, run_id, tally)
    report(m, table, case, tally, after_retry=after, note=f"killed after {killed_at}/{KILL_BATCH} stored")


def test_kill9_send_batch_at_30_percent(matrix: Matrix, fault_table: _TableReport) -> None:
    m = matrix
    m.server.set_faults(SLOW)
    m.target()
    file = m.batch_file(KILL_BATCH)
    sender = m.spawn(
        "send-batch",
        "send-batch",
        "--target",
        "Counting",
        "--file",
        str(file),
        "--concurrency",
        str(KILL_CONCURRENCY),
    )
    m.wait_stored(int(KILL_BATCH * 0.3))
    sender.kill9()
    _finish_after_kill(m, m.only_run(), fault_table, "kill -9 send-batch at 30%")


def test_kill9_worker_at_70_percent(matrix: Matrix, fault_table: _TableReport) -> None:
    m = matrix
    m.server.set_faults(SLOW)
    m.target()
    run_id = m.batch(KILL_BATCH, concurrency=KILL_CONCURRENCY)
    first = m.worker("worker-killed")
    m.wait_stored(int(KILL_BATCH * 0.7))
    first.kill9()
    _finish_after_kill(m, run_id, fault_table, "kill -9 worker at 70%")


# --------------------------------------------------------------------------------------
# 2. SIGSTOP a worker past its lease while another takes over; SIGCONT; both run on
# --------------------------------------------------------------------------------------


def test_sigstop_past_the_lease(matrix: Matrix, fault_table: _TableReport) -> None:
    m = matrix
    count, concurrency = 400, 8
    m.server.set_faults(FaultPlan(reply_delay=0.1))  # <= 40 msg/s: the batch outlasts the stop
    m.target()
    run_id = m.batch(count, concurrency=concurrency)
    paused = m.worker("worker-paused")
    m.wait_stored(count // 5)
    first = m.run(run_id)
    # Outside a transaction: one left open would hold the run's lock while the process is frozen
    # (a known stall, reproduced by test_bug_a_worker_frozen_inside_a_transaction_blocks_the_takeover).
    sigstop(m, paused, in_transaction=False)
    stopped = time.monotonic()
    stopped_at = m.server.log.total()
    successor = m.worker("worker-successor")
    m.wait_until(lambda: m.run(run_id).lease_epoch > first.lease_epoch, "the successor claimed the run")
    taken_at = m.server.log.total()
    m.wait_until(lambda: m.server.log.total() >= taken_at + 10, "the successor is sending")
    # Stopped for three leases (the successor took over after about one).
    m.wait_until(lambda: time.monotonic() >= stopped + 3 * LEASE, "three leases passed")
    os.kill(paused.pid, signal.SIGCONT)
    woke_at = m.server.log.total()
    m.wait_until(lambda: "lease lost" in paused.text(), "the woken worker noticed it lost its lease")
    m.server.set_faults(FaultPlan())
    run = m.wait_finished(run_id)
    assert paused.alive() and successor.alive(), m.logs()  # both ran to the end
    tally = check_promise(m, [run_id])
    assert len(tally.unknown) <= concurrency, tally.unknown
    assert run.lease_owner is None
    after = retry_unknown(m, run_id, tally)
    report(
        m,
        fault_table,
        "SIGSTOP past the lease",
        tally,
        after_retry=after,
        note=f"stopped after {stopped_at} stored, successor took over at {taken_at}, "
        f"the stopped one woke at {woke_at}",
    )


# --------------------------------------------------------------------------------------
# 3. A lease renewal that fails once (a lock held by another session, then broken)
# --------------------------------------------------------------------------------------

RENEWAL_FAILED = "renewing the lease failed"
# The renewal's statement (ledger/lease.py `_RENEW`); the claim's UPDATE sets lease_owner first.
RENEWAL_QUERY = "UPDATE runs SET lease_expires_at%"


def _next_renewal(m: Matrix, run_id: str, lease: float) -> tuple[float, float]:
    """(the run's lease expiry, when the next renewal is due): every third of the lease since the last."""
    expires = lease_expiry(m.run(run_id))
    return expires, expires - lease * 2 / 3


def _lease_moved(m: Matrix, run_id: str, since: float) -> Callable[[], bool]:
    return lambda: lease_expiry(m.run(run_id)) > since


def _fail_renewal_on_sqlite(m: Matrix, worker: Proc) -> str:
    """Hold SQLite's write lock past the busy timeout (5 s): the renewal gets "database is locked"."""
    holder = sqlite3.connect(m.home / "mailwright.db", timeout=30, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        held = time.monotonic()
        m.wait_until(lambda: RENEWAL_FAILED in worker.text(), "the renewal failed under the write lock", 60)
        return f"write lock held {time.monotonic() - held:.1f} s"
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _fail_renewal_on_postgres(m: Matrix, worker: Proc, run_id: str) -> str:
    """Lock the run's row, terminate the renewal's backend waiting for it, release the row."""
    assert m.database_url is not None
    engine = sa.create_engine(m.database_url)
    try:
        with (
            engine.connect() as holder,
            engine.connect().execution_options(isolation_level="AUTOCOMMIT") as monitor,
        ):
            holder.execute(sa.text("SELECT id FROM runs WHERE id = :id FOR UPDATE"), {"id": run_id})
            waiting: list[int] = []

            def renewal_waits() -> bool:
                pid = monitor.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND query LIKE :query"
                    ),
                    {"query": RENEWAL_QUERY},
                ).scalar()
                if pid is not None:
                    waiting.append(int(pid))
                return pid is not None

            m.wait_until(renewal_waits, "the renewal waits for the locked row", 60)
            terminated = monitor.execute(
                sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": waiting[-1]}
            ).scalar()
            assert terminated, f"could not terminate backend {waiting[-1]}"
            holder.rollback()
        m.wait_until(lambda: RENEWAL_FAILED in worker.text(), "the worker logged the failed renewal", 60)
        return f"terminated the renewal's backend {waiting[-1]}"
    finally:
        engine.dispose()


def test_a_renewal_that_fails_once(matrix: Matrix, fault_table: _TableReport) -> None:
    m = matrix
    # Renewed every third of the lease, retried while a sixth is left: room for a 5 s busy timeout.
    lease = 12.0 if m.backend == "postgresql" else 24.0
    count = 480
    m.server.set_faults(FaultPlan(reply_delay=0.05))  # <= 40 msg/s at concurrency 4: 12 s at least
    m.target()
    run_id = m.batch(count, concurrency=4)
    worker = m.worker("worker", lease=lease)
    m.wait_stored(1)
    expires, due = _next_renewal(m, run_id, lease)
    while due - time.time() < 1.5:  # too close to aim at: take the one after
        m.wait_until(_lease_moved(m, run_id, expires), "the lease was renewed", 60)
        expires, due = _next_renewal(m, run_id, lease)
    time.sleep(max(0.0, due - 1.0 - time.time()))  # lock a second before the renewal is due
    if m.backend == "postgresql":
        how = _fail_renewal_on_postgres(m, worker, run_id)
    else:
        how = _fail_renewal_on_sqlite(m, worker)

    renewed: list[bool] = []

    def renewed_or_lost() -> bool:
        if "lease lost" in worker.text():
            return True
        renewed.append(lease_expiry(m.run(run_id)) > expires)  # the batch outlasts this (>= 12 s)
        return renewed[-1]

    m.wait_until(renewed_or_lost, "the renewal was retried (or the lease given up)", 60)
    m.server.set_faults(FaultPlan())  # the rest may go fast
    m.wait_finished(run_id)
    log = worker.text()
    assert RENEWAL_FAILED in log and "retrying for" in log, worker.tail()
    lost = "lease lost" in log
    # Either the retry renewed the lease within the margin, or the worker gave it up in time.
    assert lost or renewed[-1], worker.tail()
    tally = check_promise(m, [run_id])
    after = retry_unknown(m, run_id, tally)
    failures = log.count(RENEWAL_FAILED)
    report(
        m,
        fault_table,
        "renewal fails once",
        tally,
        after_retry=after,
        note=f"lease {lease:g} s; {how}; renewal failed {failures}x, lease lost: {'yes' if lost else 'no'}",
    )


# --------------------------------------------------------------------------------------
# 4. Connections dropped at the end of data, after and before the store
# --------------------------------------------------------------------------------------

DROP_BATCH = 200
DROP_EVERY = 25


def test_drop_after_store(matrix: Matrix, fault_table: _TableReport) -> None:
    """Stored, then cut before the 250: unknown, counted once, not resent on its own."""
    m = matrix
    m.server.set_faults(FaultPlan(drop_after_store=Pick(every=DROP_EVERY)))
    m.target()
    run_id = m.batch(DROP_BATCH, concurrency=8)
    m.worker("worker")
    m.wait_finished(run_id)
    tally = check_promise(m, [run_id])
    dropped = {e.message_id or "" for e in m.server.log.events("drop_after_store")}
    assert len(dropped) == DROP_BATCH // DROP_EVERY
    assert tally.unknown == dropped, (tally.unknown, dropped)
    assert all(tally.counts[mid] == 1 for mid in dropped)
    assert tally.delivered == DROP_BATCH
    after = retry_unknown(m, run_id, tally)
    report(m, fault_table, "drop after store", tally, after_retry=after, note=f"every {DROP_EVERY}th dropped")


def test_drop_before_store(matrix: Matrix, fault_table: _TableReport) -> None:
    """Cut at the final dot, not stored: the body was written, so the sender cannot tell it from a
    drop after the store: unknown, never counted; `retry --include-unknown` delivers it once."""
    m = matrix
    m.server.set_faults(FaultPlan(drop_before_store=Pick(every=DROP_EVERY)))
    m.target()
    run_id = m.batch(DROP_BATCH, concurrency=8)
    m.worker("worker")
    m.wait_finished(run_id)
    tally = check_promise(m, [run_id])
    dropped = {e.message_id or "" for e in m.server.log.events("drop_before_store")}
    assert len(dropped) >= DROP_BATCH // DROP_EVERY
    assert all(tally.counts[mid] == 0 for mid in dropped - {""})
    assert tally.unknown == dropped, (tally.unknown, dropped)
    assert tally.delivered == DROP_BATCH - len(dropped)
    after = retry_unknown(m, run_id, tally)
    report(
        m, fault_table, "drop before store", tally, after_retry=after, note=f"every {DROP_EVERY}th dropped"
    )


# --------------------------------------------------------------------------------------
# 5. 4xx at RCPT: once (retried) and for good (that message fails alone)
# --------------------------------------------------------------------------------------


def test_4xx_at_rcpt(matrix: Matrix, fault_table: _TableReport) -> None:
    m = matrix
    m.target()
    worker = m.worker("worker")
    # Once: a tenth of the recipients get one 451 each, then are accepted.
    m.server.set_faults(FaultPlan(rcpt_defer=RcptDefer(fraction=0.1, times=1)))
    once = m.batch(150, concurrency=8)
    m.wait_finished(once)
    deferred = {e.recipient or "" for e in m.server.log.events("rcpt_defer")}
    assert deferred, "some recipients were deferred"
    first = check_promise(m, [once])
    assert first.unknown == set() and first.failed == 0 and first.delivered == 150
    for row in m.steps(once):
        if row.inputs and set(row.inputs.get("to") or []) & deferred:
            assert row.attempts == 2, (row.attempts, row.notes)
    # For good: one address always gets a 451; its message fails at RCPT after its 4 attempts.
    stuck = "stuck@example.net"
    m.server.set_faults(FaultPlan(rcpt_defer=RcptDefer(addresses=(stuck,))))
    persistent = m.batch(10, concurrency=4, to=lambda i: stuck if i == 3 else f"p{i}@example.net")
    m.wait_finished(persistent)

    def refused_at_rcpt(row: RunStepRow) -> bool:
        return row.run_id == persistent and (row.error or {}).get("stage") == "rcpt"

    tally = check_promise(m, [once, persistent], expected_failure=refused_at_rcpt)
    (failed,) = [row for row in m.steps(persistent) if row.status == "failed"]
    assert failed.send_state is None and failed.attempts == 4, (failed.send_state, failed.attempts)
    assert "outcome" not in (failed.error or {}) and tally.counts[failed.message_id or ""] == 0
    assert tally.unknown == set() and tally.failed == 1 and tally.delivered == 159
    assert m.run(persistent).status == "failed"
    assert worker.alive()
    report(
        m,
        fault_table,
        "4xx at RCPT",
        tally,
        note=f"{len(deferred)} recipients deferred once (retried); {stuck} always: failed at rcpt",
    )


# --------------------------------------------------------------------------------------
# 6. A reply after the end-of-data timeout
# --------------------------------------------------------------------------------------


def test_reply_after_the_data_timeout(matrix: Matrix, fault_table: _TableReport) -> None:
    m = matrix
    count, every = 100, 20
    m.target(data_timeout=1)
    m.server.set_faults(FaultPlan(slow_reply=SlowReply(seconds=3, every=every)))
    run_id = m.batch(count, concurrency=8)
    m.worker("worker")
    m.wait_finished(run_id)
    tally = check_promise(m, [run_id])
    slow = {e.message_id or "" for e in m.server.log.events("slow_reply")}
    assert len(slow) == count // every
    assert tally.unknown == slow, (tally.unknown, slow)
    assert all(tally.counts[mid] == 1 for mid in slow)  # stored before the late 250: arrived once
    for row in m.steps(run_id):
        if row.status == "unknown":
            assert "did not answer within 1 s" in (row.error or {}).get("message", ""), row.error
    after = retry_unknown(m, run_id, tally)
    report(
        m,
        fault_table,
        "reply after timeout",
        tally,
        after_retry=after,
        note="data_timeout 1 s, 250 after 3 s",
    )


# --------------------------------------------------------------------------------------
# Regressions: two stalls this matrix found (each was a strict xfail until it was fixed)
# --------------------------------------------------------------------------------------


def within(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether `predicate` came true within `timeout` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def backend_waiting(m: Matrix, query_like: str) -> int | None:
    """The PostgreSQL backend waiting for a lock while running a statement like `query_like`."""
    assert m.database_url is not None
    engine = sa.create_engine(m.database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as monitor:
            pid = monitor.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE :query"
                ),
                {"query": query_like},
            ).scalar()
            return None if pid is None else int(pid)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_failed_scan_query_does_not_end_the_worker(
    tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    with open_matrix(tmp_path, "postgresql", postgres_database) as m:
        assert m.database_url is not None
        m.target()
        worker = m.worker("worker")
        m.wait_until(lambda: " started" in worker.text(), "the worker started")
        engine = sa.create_engine(m.database_url)
        try:
            with engine.connect() as holder:
                # The next scan's first read of the runs table (runs.due, or every 2 s first the look
                # for batches with free ranges, which joins runs) waits for this lock ...
                holder.execute(sa.text("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE"))
                waiting: list[int] = []

                def scan_waits() -> bool:
                    pid = backend_waiting(m, "SELECT %runs%")
                    waiting.extend([] if pid is None else [pid])
                    return pid is not None

                m.wait_until(scan_waits, "the worker's scan waits for the runs table")
                # ... and fails once, as it would when a failover cuts its connection.
                with engine.connect() as admin:
                    admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": waiting[-1]})
                    admin.commit()
                holder.rollback()
        finally:
            engine.dispose()
        run_id = m.batch(5, concurrency=2)
        within(lambda: not worker.alive() or m.run(run_id).status in TERMINAL, WAIT)
        print(f"\nregression: the worker {'is alive' if worker.alive() else 'EXITED'}\n{worker.tail(1500)}")
        if not worker.alive():
            pytest.fail(f"one failed scan query ended the worker process\n{worker.tail(1500)}")
        assert m.run(run_id).status == "succeeded"


@pytest.mark.postgres
def test_a_worker_frozen_inside_a_transaction_does_not_stall_another(
    tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    with open_matrix(tmp_path, "postgresql", postgres_database) as m:
        m.server.set_faults(FaultPlan(reply_delay=0.1))
        m.target()
        frozen_run = m.batch(400, concurrency=8)
        frozen = m.worker("worker-frozen")
        m.wait_stored(20)
        tries = sigstop(m, frozen, in_transaction=True)
        expires = lease_expiry(m.run(frozen_run))
        m.wait_until(lambda: time.time() > expires + 0.5, "the frozen worker's lease expired")
        other_run = m.batch(20, concurrency=4, to=lambda i: f"other{i}@example.net")
        m.server.set_faults(FaultPlan())
        healthy = m.worker("worker-healthy")
        # Its claim of the frozen worker's run skips the locked row (SKIP LOCKED) instead of waiting ...
        claim_waits = within(
            lambda: backend_waiting(m, "UPDATE runs SET status=%lease_owner%") is not None, 4 * LEASE
        )
        # ... so the run nobody else holds goes on (its writes would queue behind a waiting claim).
        finished = within(lambda: m.run(other_run).status in TERMINAL, 4 * LEASE)
        other = m.steps(other_run)
        print(
            f"\nregression: stopped inside a transaction after {tries} tries; with it frozen for "
            f"{4 * LEASE:g} s past its lease, the other run is {m.run(other_run).status} with "
            f"{sum(s.status == 'succeeded' for s in other)}/{len(other)} sent; frozen run: "
            f"{m.run(frozen_run).status}, epoch {m.run(frozen_run).lease_epoch}; the healthy worker's "
            f"claim {'waited' if claim_waits else 'was not seen waiting'} for the frozen one's row lock"
        )
        assert healthy.alive(), healthy.tail()
        if not finished:
            pytest.fail("a worker frozen inside a transaction stalls every write of a healthy worker")
