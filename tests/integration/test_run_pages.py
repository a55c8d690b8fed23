"""Runs paged and filtered (status, workflow, target), a batch's steps searched by recipient or
Message-ID, and a run's progress: the services and the REST API (the pages: tests/e2e/test_web_runs.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from mailwright.errors import ValidationError
from mailwright.services.app import Services
from mailwright.services.run_pages import RunFilter, RunProgress, StepFilter, ordered_counts
from mailwright.services.sending import SendEmailRequest
from mailwright.storage.tables import RunRow
from mailwright.web.times import absolute, ago
from tests.integration.conftest import Targets
from tests.integration.test_workflows_api import poll_run, relay
from tests.support.cli import CLI, assert_ok
from tests.support.smtpserver import SMTPServerFactory


def batch_lines(count: int) -> list[tuple[str, str]]:
    messages = (
        {"from": "b@example.org", "to": [f"r{i}@example.net"], "cc": f"Copy{i}@Example.org", "subject": "s"}
        for i in range(count)
    )
    return [(f"line {n}", json.dumps(m)) for n, m in enumerate(messages, start=1)]


def send(mw: Services, target: str) -> str:
    request = SendEmailRequest.model_validate(
        {"target": target, "from": "a@example.org", "to": ["x@example.net"], "subject": "hi"}
    )
    return mw.runs.start_send_email(request).id


def test_runs_are_paged_and_filtered_by_status_workflow_and_target(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    first = relay(targets, smtp_server_factory(), "First relay")
    second = relay(targets, smtp_server_factory(), "Second relay")
    ids = [send(mw, first) for _ in range(7)] + [send(mw, second) for _ in range(3)]
    with mw.db.session() as session:  # distinct creation times: the order is certain
        for n, run_id in enumerate(ids):
            row = session.get(RunRow, run_id)
            assert row is not None
            row.created_at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=n)
    page = mw.runs.page_runs(RunFilter(), offset=0, limit=4)
    assert (page.total, page.first, page.last, page.next_offset) == (10, 1, 4, 4)
    assert [r.id for r in page.items] == ids[::-1][:4]
    last = mw.runs.page_runs(RunFilter(), offset=8, limit=4)
    assert (last.first, last.last, last.next_offset, last.previous_offset) == (9, 10, None, 4)
    by_target = mw.runs.page_runs(RunFilter(target="second RELAY"), limit=50)
    assert by_target.total == 3 and {r.target for r in by_target.items} == {second}
    assert mw.runs.page_runs(RunFilter(workflow="send email", target=first)).total == 7
    assert mw.runs.page_runs(RunFilter(status="cancelled")).total == 0
    assert [r.id for r in mw.runs.list_runs(target=first, offset=6, limit=5)] == [ids[0]]


def test_batch_steps_searched_by_recipient_and_message_id_and_the_api(
    mw: Services, api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    target = relay(targets, smtp_server_factory())
    created = mw.batches.create(batch_lines(120), target=target)
    poll_run(api, created.run_id)
    found = mw.runs.steps_page(created.run_id, StepFilter(search="R42@example.NET"))
    assert found.total == 1 and found.items[0].step == "message[42]"
    assert mw.runs.steps_page(created.run_id, StepFilter(search="copy7@example.org")).total == 1
    assert mw.runs.steps_page(created.run_id, StepFilter(search="r1")).total == 31  # r1, r10-19, r100-119
    # A LIKE wildcard is a plain character here.
    assert mw.runs.steps_page(created.run_id, StepFilter(search="r%@")).total == 0
    message_id = found.items[0].message_id
    assert message_id is not None
    by_id = mw.runs.steps_page(created.run_id, StepFilter(search=message_id.strip("<>").split("@")[0][-16:]))
    assert [s.step for s in by_id.items] == ["message[42]"]
    paged = mw.runs.steps_page(created.run_id, StepFilter(state="succeeded"), offset=100, limit=50)
    assert (paged.total, paged.first, paged.last) == (120, 101, 120)
    assert paged.items[0].inputs is not None and paged.items[0].inputs["to"] == ["r100@example.net"]
    with pytest.raises(ValidationError, match="unknown step state"):
        mw.runs.steps_page(created.run_id, StepFilter(state="lost"))
    with pytest.raises(ValidationError, match="at most 200 characters"):
        StepFilter(search="x" * 201)

    steps = api.get(f"/api/v1/runs/{created.run_id}/steps", params={"q": "r42@example.net"})
    assert steps.status_code == 200 and [s["index"] for s in steps.json()] == [42]
    progress = api.get(f"/api/v1/runs/{created.run_id}/progress").json()
    assert progress == {"status": "succeeded", "total": 120, "done": 120, "counts": {"succeeded": 120}}
    listed = api.get("/api/v1/runs", params={"target": target.upper(), "offset": 0, "limit": 5})
    assert [r["id"] for r in listed.json()] == [created.run_id]
    assert api.get("/api/v1/runs", params={"target": "nobody"}).json() == []


def test_progress_counts_failed_first_and_times_read_both_ways() -> None:
    counts = ordered_counts({"succeeded": 5, "pending": 2, "failed": 1, "unknown": 1})
    assert list(counts) == ["failed", "unknown", "pending", "succeeded"]
    progress = RunProgress(status="running", counts=counts)
    assert (progress.total, progress.done) == (9, 7)
    now = datetime(2026, 12, 4, 17, 0, tzinfo=UTC)
    assert ago(now - timedelta(seconds=2), now) == "just now"
    assert ago(now - timedelta(seconds=42), now) == "42 s ago"
    assert ago(now - timedelta(minutes=3, seconds=5), now) == "3 min ago"
    assert ago(now - timedelta(days=1, hours=2), now) == "1 day ago"
    assert ago(now - timedelta(days=3), now) == "3 days ago"
    assert ago(now + timedelta(minutes=2), now) == "in 2 min"
    assert absolute(now.replace(tzinfo=None)) == "2026-12-04 17:00:00 UTC"


def test_cli_runs_list_by_target_and_offset(
    cli: CLI, mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    first = relay(targets, smtp_server_factory(), "First relay")
    second = relay(targets, smtp_server_factory(), "Second relay")
    mine = [send(mw, second) for _ in range(2)]
    send(mw, first)
    listed = json.loads(assert_ok(cli("runs", "list", "--target", "second relay", "--json")).stdout)
    assert sorted(r["id"] for r in listed) == sorted(mine)
    later = json.loads(assert_ok(cli("runs", "list", "--target", second, "--offset", "1", "--json")).stdout)
    assert len(later) == 1 and later[0]["id"] in mine
