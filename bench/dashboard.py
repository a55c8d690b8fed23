"""The dashboard's queries (services/stats.py) on a database of 1,000,000 send steps.

Fills a fresh database (SQLite in a temporary folder, and a new PostgreSQL database that is
dropped afterwards) with `--steps` send steps over the last 30 days: 40% in batches of
10,000 messages over four targets, 60% as single sends (a run each, so 600,000 runs), 3%
failed with a mix of SMTP codes and error classes, 1% unknown, 1% deferred, 2% retried and
1% held by a rate limit. Then it times the first look (which counts the closed hours of the
30 days once, into `delivery_hours`) and each query after it, median of `--repeat`.

    .venv/bin/python bench/dashboard.py                       # SQLite and PostgreSQL, ~6 minutes
    .venv/bin/python bench/dashboard.py --steps 100000 --no-postgres
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, as bench/scale.py does

from tests.support.postgres import fresh_database

from mailwright.services.stats import Span, StatsService
from mailwright.storage.db import Database
from mailwright.storage.tables import RunRow, RunStepRow, utcnow

PG_ADMIN = "postgresql://mailwright:mailwright@127.0.0.1:5432/postgres"
TARGETS = ("Relay A", "Relay B", "Gmail", "Sandbox")
BATCH = 10_000
CHUNK = 20_000
ERRORS: tuple[dict[str, Any], ...] = (
    {"code": "rejected", "smtp_code": 550, "message": "550 5.1.1 user unknown"},
    {"code": "rejected", "smtp_code": 552, "message": "552 5.2.2 mailbox full"},
    {"code": "deferred", "smtp_code": 421, "message": "421 4.7.0 try again later"},
    {"code": "connect_error", "message": "cannot connect to smtp.example.test:587"},
    {"code": "timeout", "message": "the step did not finish within its timeout"},
)


def _step(run_id: str, index: int | None, rng: random.Random, now: Any) -> dict[str, Any]:
    when = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
    roll = rng.random()
    status, error, notes, attempts = "succeeded", None, [], 1
    if roll < 0.03:
        status, error = "failed", rng.choice(ERRORS)
    elif roll < 0.04:
        status = "unknown"
        error = {"code": "outcome_unknown", "message": "the outcome is unknown"}
    elif roll < 0.05:
        status, attempts = "deferred", 1
    elif roll < 0.07:
        attempts = 2
    elif roll < 0.08:
        notes = ["rate limit: Relay A allows 100 per minute; the next slot is at 12:00:01"]
    return {
        "id": str(uuid.uuid4()),
        "run_id": run_id,
        "position": 0,
        "step_id": "send",
        "item_index": index,
        "activity": "send_email",
        "status": status,
        "attempts": attempts,
        "max_attempts": 4,
        "error": error,
        "notes": notes,
        "message_id": f"<{uuid.uuid4().hex}@bench>",
        "send_state": "sent" if status == "succeeded" else None,
        "started_at": when,
        "finished_at": when if status != "deferred" else None,
        "updated_at": when,
    }


def _run(run_id: str, target: str, now: Any) -> dict[str, Any]:
    return {
        "id": run_id,
        "workflow_name": "batch",
        "document": {},
        "status": "succeeded",
        "inputs": {},
        "target": target,
        "created_at": now,
        "notes": None,
    }


def _rows(steps: int, seed: int = 17) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    rng = random.Random(seed)
    now = utcnow()
    batched = steps * 4 // 10
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for i in range(steps):
        if i < batched:
            if i % BATCH == 0:
                runs.append(_run(str(uuid.uuid4()), TARGETS[(i // BATCH) % len(TARGETS)], now))
            rows.append(_step(runs[-1]["id"], i % BATCH, rng, now))
        else:
            runs.append(_run(str(uuid.uuid4()), rng.choice(TARGETS), now))
            rows.append(_step(runs[-1]["id"], None, rng, now))
        if len(rows) >= CHUNK:
            yield runs, rows
            runs, rows = [], []
    if rows:
        yield runs, rows


def fill(db: Database, steps: int) -> float:
    started = time.perf_counter()
    for runs, rows in _rows(steps):
        for run in runs:
            run.pop("notes")
        with db.engine.begin() as connection:
            if runs:
                connection.execute(sa.insert(RunRow), runs)
            connection.execute(sa.insert(RunStepRow), rows)
    return time.perf_counter() - started


def _analyze(db: Database) -> None:
    with db.engine.begin() as connection:
        connection.execute(sa.text("ANALYZE"))


def cases(stats: StatsService, run_id: str) -> dict[str, Callable[[], object]]:
    now = utcnow()
    return {
        "per hour, 24 h, all targets": lambda: stats.delivery(Span.HOURS),
        "per day, 30 days, all targets": lambda: stats.delivery(Span.DAYS),
        "per day, 30 days, one target": lambda: stats.delivery(Span.DAYS, target="Relay A"),
        "top failure reasons, 30 days": lambda: stats.failure_reasons(since=now - timedelta(days=30)),
        "rate-limit deferrals, 24 h": lambda: stats.rate_limited(since=now - timedelta(hours=24)),
        "a batch's timeline (10,000 steps)": lambda: stats.run_timeline(run_id),
        "the whole dashboard": lambda: stats.dashboard(),
    }


def time_cases(stats: StatsService, run_id: str, repeat: int) -> dict[str, float]:
    timings: dict[str, float] = {}
    for name, call in cases(stats, run_id).items():
        call()  # warm: the first read pulls the pages into the cache
        runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            call()
            runs.append(time.perf_counter() - started)
        timings[name] = statistics.median(runs) * 1000
    return timings


def _a_batch(db: Database) -> str:
    with db.engine.connect() as connection:
        query = sa.select(RunStepRow.run_id).where(RunStepRow.item_index == 0).limit(1)
        return str(connection.execute(query).scalar_one())


def measure(url: str, label: str, steps: int, repeat: int) -> None:
    db = Database(url)
    db.migrate()
    print(f"{label}: filling {steps:,} steps ...", flush=True)
    print(f"  filled in {fill(db, steps):.1f} s", flush=True)
    _analyze(db)
    stats = StatsService(db)
    run_id = _a_batch(db)
    started = time.perf_counter()
    stats.count_closed_hours()
    first = (time.perf_counter() - started) * 1000
    timings = time_cases(stats, run_id, repeat)
    print(f"  medians of {repeat}, ms:")
    print(f"  | query ({label}, {steps:,} steps) | ms |")
    print("  |---|---:|")
    print(f"  | the first look: counting the 30 days' closed hours, once | {first:,.1f} |")
    for name, ms in timings.items():
        print(f"  | {name} | {ms:,.1f} |")
    db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN)
    args = parser.parse_args()
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as folder:
            measure(f"sqlite:///{Path(folder) / 'bench.db'}", "SQLite", args.steps, args.repeat)
    if not args.no_postgres:
        with fresh_database(args.pg_admin_url, prefix="mw_bench") as url:
            measure(url, "PostgreSQL", args.steps, args.repeat)


if __name__ == "__main__":
    main()
