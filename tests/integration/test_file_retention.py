"""Retention of the file store: prune (service, CLI, worker) keeps what unfinished runs still use."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailwright.config import Settings
from mailwright.engine.worker import Worker
from mailwright.services.app import Services
from mailwright.services.sending import SendEmailRequest
from mailwright.services.targets import TargetCreate
from mailwright.storage.tables import RunRow, RunStepRow
from tests.integration.conftest import Targets
from tests.support.cli import CLI, assert_error, assert_ok
from tests.support.smtpserver import SMTPServerFactory

DAY = 86400.0
MONTH = timedelta(days=30)


def path_of(mw: Services, ref: str) -> Path:
    digest = ref.removeprefix("sha256:")
    return mw.files.root / digest[:2] / digest


def stored(mw: Services, data: bytes, *, days_old: float = 0.0) -> str:
    """Store `data` as if it had been read from mail `days_old` days ago."""
    ref = mw.files.put(data)
    when = time.time() - days_old * DAY
    os.utime(path_of(mw, ref), (when, when))
    return ref


def present(mw: Services) -> set[str]:
    return {f.ref for f in mw.files.iter_files()}


def send_request(target: str, ref: str) -> SendEmailRequest:
    return SendEmailRequest.model_validate(
        {
            "target": target,
            "from": "robot@example.org",
            "to": ["bob@example.net"],
            "subject": "the invoice",
            "body": "attached",
            "attachments": [{"file_name": "invoice.pdf", "file": ref}],
        }
    )


def set_run(mw: Services, run_id: str, **fields: Any) -> None:
    with mw.db.session() as session:
        run = session.get(RunRow, run_id)
        assert run is not None
        for name, value in fields.items():
            setattr(run, name, value)


def set_step(mw: Services, run_id: str, **fields: Any) -> None:
    with mw.db.session() as session:
        step = session.scalars(select(RunStepRow).where(RunStepRow.run_id == run_id)).one()
        for name, value in fields.items():
            setattr(step, name, value)


# --- the service ------------------------------------------------------------------------


def test_summary_counts_files_and_bytes(mw: Services) -> None:
    empty = mw.file_service.summary()
    assert (empty.count, empty.bytes, empty.oldest, empty.newest) == (0, 0, None, None)
    stored(mw, b"x" * 100, days_old=40)
    stored(mw, b"y" * 20)
    summary = mw.file_service.summary()
    assert (summary.count, summary.bytes) == (2, 120)
    assert summary.oldest is not None and summary.newest is not None
    assert timedelta(days=39) < summary.newest - summary.oldest < timedelta(days=41)


def test_prune_removes_old_unreferenced_files_and_keeps_new_ones(mw: Services) -> None:
    old = stored(mw, b"o" * 300, days_old=31)
    older = stored(mw, b"p" * 200, days_old=400)
    new = stored(mw, b"n" * 50, days_old=29)
    result = mw.file_service.prune(MONTH, dry_run=False)
    assert (result.removed, result.removed_bytes) == (2, 500)
    assert (result.kept_recent, result.kept_recent_bytes) == (1, 50)
    assert (result.kept_referenced, result.failed) == (0, 0)
    assert present(mw) == {new}
    assert not path_of(mw, old).exists() and not path_of(mw, older).exists()
    again = mw.file_service.prune(MONTH, dry_run=False)
    assert (again.removed, again.kept_recent) == (0, 1)


def test_dry_run_removes_nothing_but_says_what_it_would(mw: Services) -> None:
    old = stored(mw, b"o" * 300, days_old=31)
    new = stored(mw, b"n" * 50)
    result = mw.file_service.prune(MONTH, dry_run=True)
    assert result.dry_run and (result.removed, result.removed_bytes, result.kept_recent) == (1, 300, 1)
    assert present(mw) == {old, new}


def test_old_files_of_unfinished_runs_are_kept_until_the_run_finishes(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    target = targets.target(smtp_server_factory(), security="none")
    # One run refers to its files from every place a reference can be recorded.
    in_document = stored(mw, b"attachment to send", days_old=60)
    in_inputs, in_trigger = stored(mw, b"input", days_old=60), stored(mw, b"trigger", days_old=60)
    in_step_inputs, in_step_output = stored(mw, b"step in", days_old=60), stored(mw, b"out", days_old=60)
    unreferenced = stored(mw, b"nobody needs this", days_old=60)
    run = mw.runs.start_send_email(send_request(target.display_name, in_document))
    assert run.status == "queued"
    set_run(
        mw,
        run.id,
        inputs={"invoice": in_inputs},
        trigger={"message": {"attachments": [{"file_name": "a.pdf", "file": in_trigger, "size": 7}]}},
    )
    set_step(
        mw, run.id, inputs={"attachments": [{"file": in_step_inputs}]}, output={"files": [in_step_output]}
    )
    referenced = {in_document, in_inputs, in_trigger, in_step_inputs, in_step_output}
    # Another finished run refers to the unreferenced file: finished runs do not keep files.
    done = mw.runs.start_send_email(send_request(target.display_name, unreferenced))
    set_run(mw, done.id, status="succeeded")

    result = mw.file_service.prune(MONTH, dry_run=False)
    assert (result.removed, result.kept_referenced) == (1, 5)
    assert result.referencing_runs == [run.id] and result.referencing_run_count == 1
    assert present(mw) == referenced

    for status in ("running", "preparing"):
        set_run(mw, run.id, status=status)
        assert mw.file_service.prune(MONTH, dry_run=False).kept_referenced == 5
        assert present(mw) == referenced

    set_run(mw, run.id, status="failed")
    result = mw.file_service.prune(MONTH, dry_run=False)
    assert (result.removed, result.kept_referenced) == (5, 0)
    assert present(mw) == set()


def test_a_queued_batch_keeps_the_files_its_messages_attach(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    """A batch message's fields live in step_inputs, apart from its step row: they count too."""
    target = targets.target(smtp_server_factory(), security="none")
    attached, other = stored(mw, b"%PDF-1.7 batch", days_old=60), stored(mw, b"unused", days_old=60)
    fields = send_request(target.display_name, attached).model_dump(mode="json", by_alias=True)
    line = json.dumps({k: v for k, v in fields.items() if v not in (None, [], {})})
    created = mw.batches.create([("line 1", line)], target=target.display_name)

    result = mw.file_service.prune(MONTH, dry_run=False)
    assert (result.removed, result.kept_referenced) == (1, 1)
    assert result.referencing_runs == [created.run_id]
    assert present(mw) == {attached} and other not in present(mw)


async def test_a_retried_run_whose_file_was_pruned_fails_naming_the_file(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none")
    ref = stored(mw, b"%PDF-1.7 old invoice", days_old=90)
    run = mw.runs.start_send_email(send_request(target.display_name, ref))
    assert mw.runs.cancel(run.id).status == "cancelled"
    assert mw.file_service.prune(MONTH, dry_run=False).removed == 1  # a cancelled run keeps nothing

    mw.runs.retry(run.id)
    executor = mw.executor(worker_id="test", lease=timedelta(seconds=5))
    assert await executor.execute(run.id) == "failed"
    failed = mw.runs.get(run.id)
    assert failed.error is not None
    assert ref in failed.error["message"] and "no longer stored" in failed.error["message"]
    assert "pruned" in failed.error["message"] and "read the mail again" in failed.error["hint"]
    assert server.messages == []


# --- the worker ---------------------------------------------------------------------------


async def test_the_worker_applies_files_keep_days(mw: Services, caplog: pytest.LogCaptureFixture) -> None:
    worker = Worker(mw)
    old, new = stored(mw, b"o" * 10, days_old=8), stored(mw, b"n" * 10, days_old=6)
    assert await worker.prune_files() is None  # not configured: files are kept forever
    assert present(mw) == {old, new}

    mw.settings.files_keep_days = 7
    with caplog.at_level(logging.INFO, logger="mailwright.engine.worker"):
        result = await worker.prune_files()
    assert result is not None and (result.removed, result.removed_bytes, result.kept_recent) == (1, 10, 1)
    assert present(mw) == {new}
    assert "removed 1 file(s) older than 7 days (10 bytes freed)" in caplog.text


async def test_the_worker_scan_prunes_at_most_once_an_hour(mw: Services) -> None:
    mw.settings.files_keep_days = 7
    worker = Worker(mw)
    first = stored(mw, b"first", days_old=10)
    await worker.scan()
    assert first not in present(mw)
    second = stored(mw, b"second", days_old=10)
    await worker.scan()  # within the hour: not again
    assert second in present(mw)
    worker._next_files_prune = time.monotonic()  # an hour later
    await worker.scan()
    assert second not in present(mw)


# --- the CLI ------------------------------------------------------------------------------


def test_cli_list_and_prune(mw: Services, cli: CLI) -> None:
    old = stored(mw, b"o" * 2048, days_old=31)
    new = stored(mw, b"n" * 100)
    listed = assert_ok(cli("files", "list"))
    assert "files      2" in listed.stdout and "2.1 KB" in listed.stdout
    assert assert_ok(cli("files", "list", "--json")).json()["count"] == 2

    dry = assert_ok(cli("files", "prune", "--older-than", "30d", "--dry-run"))
    assert "would remove 1 file older than 30d" in dry.stdout and "would free 2.0 KB" in dry.stdout
    assert present(mw) == {old, new}

    data = assert_ok(cli("files", "prune", "--older-than", "720h", "--dry-run", "--json")).json()
    assert data["dry_run"] is True and data["removed"] == 1 and data["removed_bytes"] == 2048

    done = assert_ok(cli("files", "prune", "--older-than", "43200m"))
    assert "removed 1 file older than 43200m" in done.stdout and "freed 2.0 KB" in done.stdout
    assert "kept 1 file (100 B): newer than 43200m" in done.stdout
    assert present(mw) == {new}


def test_cli_prune_says_what_an_active_run_keeps(
    mw: Services, cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    target = targets.target(smtp_server_factory(), security="none")
    kept = stored(mw, b"still needed", days_old=40)
    run = mw.runs.start_send_email(send_request(target.display_name, kept))
    result = assert_ok(cli("files", "prune", "--older-than", f"{int(DAY)}s"))
    assert "removed 0 files" in result.stdout
    assert f"kept 1 file (12 B): still referenced by 1 active run ({run.id})" in result.stdout
    data = assert_ok(cli("files", "prune", "--older-than", "1d", "--json")).json()
    assert (data["kept_referenced"], data["referencing_runs"]) == (1, [run.id])
    assert present(mw) == {kept}


@pytest.mark.parametrize("duration", ["30", "1w", "30 days", "-5d", "1.5h", "d"])
def test_cli_refuses_a_bad_duration(cli: CLI, duration: str) -> None:
    result = cli("files", "prune", f"--older-than={duration}")
    assert_error(result, 2, "--older-than", "is not a duration", "30d, 12h, 90m, 3600s")


def test_cli_refuses_a_zero_or_missing_duration(cli: CLI) -> None:
    assert_error(cli("files", "prune", "--older-than", "0s"), 2, "is zero")
    assert cli("files", "prune").returncode == 2


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
def pg(pg_url: str, tmp_path: Path) -> Iterator[Services]:
    """Services on a fresh PostgreSQL database (the `pg_url` fixture), dropped afterwards."""
    services = Services(Settings(home=tmp_path / "pg-home", database_url=pg_url))
    yield services
    services.close()


@pytest.mark.postgres
def test_references_are_found_in_json_on_postgres(
    pg: Services, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    pg.targets.create(
        TargetCreate(
            display_name="Relay", server="127.0.0.1", port=server.port, security="none", no_account_keys=True
        )
    )
    in_document = stored(pg, b"document", days_old=60)
    in_trigger, in_output = stored(pg, b"trigger", days_old=60), stored(pg, b"output", days_old=60)
    unreferenced = stored(pg, b"unreferenced", days_old=60)
    run = pg.runs.start_send_email(send_request("Relay", in_document))
    set_run(pg, run.id, trigger={"message": {"attachments": [{"file": in_trigger}]}})
    set_step(pg, run.id, output={"files": [in_output]})
    result = pg.file_service.prune(MONTH, dry_run=False)
    assert (result.removed, result.kept_referenced, result.referencing_runs) == (1, 3, [run.id])
    assert unreferenced not in present(pg) and len(present(pg)) == 3
