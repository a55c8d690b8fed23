"""The email trigger on a Microsoft Graph Endpoint target: delta queries, as the IMAP trigger's guarantees.

Against the Graph stand-in (tests/support/graph_server.py) with real Graph keys: the
trigger follows the folder's delta link (kept in its state), takes each message once by
its immutable id (mail moved into the folder too, whatever its arrival time), across a
restart of the trigger manager and the worker, applies the after-success action only
once the run succeeded, and after an expired delta link (410) looks again at the whole
folder without taking anything twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from mailwright.activities.mailbox import imap_folder
from mailwright.engine.triggers import TriggerManager
from mailwright.engine.worker import Worker
from mailwright.services.app import Services
from mailwright.storage.tables import TriggerMessageRow, TriggerStateRow
from tests.integration.test_graph_mailbox import START, raw
from tests.integration.test_graph_send import MAILBOX
from tests.integration.test_graph_target import graph_target
from tests.support.graph_keys import GraphKeys, graph_oauth, keyed
from tests.support.graph_server import GraphServer

__all__ = ["graph_oauth", "keyed"]  # the fixtures, used here by name

FORWARD_TO = "{{ 'not an address' if 'broken' in trigger.message.subject else 'accounts@example.org' }}"


@pytest.fixture
def graph(keyed: GraphKeys) -> Iterator[GraphServer]:
    """Five messages in the inbox before the trigger starts, one long-archived invoice elsewhere."""
    with GraphServer(tokens=keyed.roles, users=[MAILBOX]) as server:
        for n in range(1, 6):
            server.deliver(MAILBOX, raw(f"Invoice {n}"), received=START + timedelta(minutes=n))
        server.deliver(MAILBOX, raw("Invoice old"), folder="archive", received=START - timedelta(days=30))
        yield server


def invoices(after_success: dict[str, Any], **trigger: Any) -> str:
    return json.dumps(
        {
            "name": "Graph invoices",
            "target": "Contoso",
            "triggers": [
                {
                    "type": "email",
                    "target": "Contoso",
                    "folder": "INBOX",
                    "conditions": {"all": [{"field": "subject", "op": "contains", "value": "Invoice"}]},
                    "after_success": after_success,
                    **trigger,
                }
            ],
            "steps": [
                {
                    "id": "forward",
                    "activity": "send_email",
                    "with": {
                        "from": MAILBOX,
                        "to": [FORWARD_TO],
                        "subject": "Fwd: {{ trigger.message.subject }}",
                        "body": "From {{ trigger.message.from }}",
                    },
                }
            ],
        }
    )


@contextlib.asynccontextmanager
async def running(mw: Services, *, execute: bool = True) -> AsyncIterator[None]:
    """A trigger manager (and, when asked, a worker executing the runs) until the block ends."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(TriggerManager(mw, reconcile_seconds=0.3, poll_seconds=0.3).run(stop))]
    if execute:
        worker = Worker(Services(mw.settings.model_copy(update={"triggers": False})), poll_interval=0.2)
        tasks.append(asyncio.create_task(worker.run(stop)))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)


def taken(mw: Services) -> list[tuple[str, str]]:
    with mw.db.session() as session:
        rows = session.scalars(select(TriggerMessageRow)).all()
        return sorted((r.subject or "", r.status) for r in rows)


def cursor(mw: Services) -> str | None:
    with mw.db.session() as session:
        (state,) = session.scalars(select(TriggerStateRow)).all()
        return state.change_cursor


async def eventually(mw: Services, check: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {taken(mw)}")
        await asyncio.sleep(0.1)


async def more_looks(mw: Services, graph: GraphServer, looks: int = 3) -> None:
    """Wait for a few more delta queries: a message taken twice would show by then."""
    before = len(graph.requests_to("GET", "/messages/delta"))
    await eventually(
        mw, lambda: len(graph.requests_to("GET", "/messages/delta")) >= before + looks, "more looks"
    )


def move_in(graph: GraphServer, message_id: str, source: str = "archive") -> None:
    """A mail client moves a message into the inbox (its immutable id and arrival time stay)."""
    inbox = graph.folder(MAILBOX, "inbox")["messages"]
    inbox[message_id] = graph.folder(MAILBOX, source)["messages"].pop(message_id)


def id_of(graph: GraphServer, subject: str) -> str:
    for folder in graph.folders[graph.users[MAILBOX.lower()]["id"]].values():
        for message_id, message in folder["messages"].items():
            if message.get("subject") == subject and not message.get("isDraft"):
                return str(message_id)
    raise AssertionError(f"no message {subject!r}")


def fresh_looks(graph: GraphServer) -> int:
    """Delta queries that started from nothing (a baseline), not from a delta or skip token."""
    return sum(
        1
        for r in graph.requests_to("GET", "/messages/delta")
        if "$deltatoken" not in r.query and "$skiptoken" not in r.query
    )


BASELINE = [("", "skipped")] * 5  # the five invoices there before: recorded as seen, never read


async def test_once_per_message_with_moves_in_across_a_restart(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    graph_target(mw, graph, keyed, token="good")
    workflow = mw.workflows.create(invoices({"action": "move", "folder": "Processed"}))
    now = datetime.now(UTC)
    async with running(mw):
        await eventually(mw, lambda: mw.triggers.list_all(workflow.id)[0].status == "polling", "a look")
        graph.deliver(MAILBOX, raw("Invoice 42"), received=now + timedelta(seconds=5))
        graph.deliver(MAILBOX, raw("Lunch on Friday"), received=now + timedelta(seconds=6))
        # Moved in by a mail client: it arrived a month ago, below any mark by arrival time.
        move_in(graph, id_of(graph, "Invoice old"))
        await eventually(
            mw,
            lambda: {("Invoice 42", "succeeded"), ("Invoice old", "succeeded")} <= set(taken(mw)),
            "the first runs",
        )
    kept = cursor(mw)
    assert kept is not None and kept.startswith(graph.base_url) and "$deltatoken=" in kept

    async with running(mw):  # a restart of the trigger manager and the worker
        graph.deliver(MAILBOX, raw("Invoice 43"), received=now + timedelta(seconds=7))
        # A change to mail seen before (read in a mail client) comes in the delta too: not new mail.
        graph.folder(MAILBOX, "inbox")["messages"][id_of(graph, "Invoice 2")].update(
            isRead=True, changeKey="read-by-a-person"
        )
        await eventually(mw, lambda: ("Invoice 43", "succeeded") in taken(mw), "the run after the restart")
        await more_looks(mw, graph)
    assert cursor(mw) != kept
    assert taken(mw) == [
        *BASELINE,
        ("Invoice 42", "succeeded"),
        ("Invoice 43", "succeeded"),
        ("Invoice old", "succeeded"),
        ("Lunch on Friday", "skipped"),
    ]
    forwarded = sorted(s["message"]["subject"] for s in graph.sent)
    assert forwarded == ["Fwd: Invoice 42", "Fwd: Invoice 43", "Fwd: Invoice old"]
    processed = graph.folder(MAILBOX, "Processed")["messages"].values()
    assert sorted(m["subject"] for m in processed) == ["Invoice 42", "Invoice 43", "Invoice old"]
    assert fresh_looks(graph) == 1  # one baseline; every look since from the stored delta link
    # Keyed by the immutable id, as the IMAP trigger keys by UID.
    with mw.db.session() as session:
        keys = {r.subject: r.message_key for r in session.scalars(select(TriggerMessageRow))}
    assert keys["Invoice old"] == id_of(graph, "Invoice old")


async def test_after_success_only_once_the_run_succeeded(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    graph_target(mw, graph, keyed, token="good")
    workflow = mw.workflows.create(invoices({"action": "mark_read"}))
    async with running(mw, execute=False):  # runs are started, but nobody executes them yet
        await eventually(mw, lambda: mw.triggers.list_all(workflow.id)[0].status == "polling", "a look")
        graph.deliver(MAILBOX, raw("Invoice good"))
        graph.deliver(MAILBOX, raw("Invoice broken"))
        await eventually(
            mw,
            lambda: taken(mw) == [*BASELINE, ("Invoice broken", "started"), ("Invoice good", "started")],
            "runs",
        )
        await more_looks(mw, graph)
    inbox = graph.folder(MAILBOX, "inbox")["messages"]
    assert not inbox[id_of(graph, "Invoice good")]["isRead"]  # the run has not finished: untouched
    assert graph.requests_to("PATCH", id_of(graph, "Invoice good")) == []

    async with running(mw):
        await eventually(
            mw,
            lambda: taken(mw) == [*BASELINE, ("Invoice broken", "failed"), ("Invoice good", "succeeded")],
            "the outcomes",
        )
    assert inbox[id_of(graph, "Invoice good")]["isRead"] is True
    assert inbox[id_of(graph, "Invoice broken")]["isRead"] is False  # a failed run leaves the mail alone
    assert graph.requests_to("PATCH", id_of(graph, "Invoice broken")) == []
    assert [s["message"]["subject"] for s in graph.sent] == ["Fwd: Invoice good"]


async def test_an_expired_delta_link_is_a_new_look_without_duplicates(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    graph_target(mw, graph, keyed, token="good")
    workflow = mw.workflows.create(invoices({"action": "none"}))
    async with running(mw):
        await eventually(mw, lambda: mw.triggers.list_all(workflow.id)[0].status == "polling", "a look")
        graph.deliver(MAILBOX, raw("Invoice 42"))
        await eventually(mw, lambda: ("Invoice 42", "succeeded") in taken(mw), "the first run")
        # Graph forgets the sync state (410 Gone) while mail arrives and is moved in.
        graph.expire_delta_links()
        graph.deliver(MAILBOX, raw("Invoice 43"))
        move_in(graph, id_of(graph, "Invoice old"))
        await eventually(
            mw,
            lambda: {("Invoice 43", "succeeded"), ("Invoice old", "succeeded")} <= set(taken(mw)),
            "the runs after the reset",
        )
        await more_looks(mw, graph)
    assert fresh_looks(graph) == 2  # the baseline, and the new look after the 410
    # The Invoice 42 still in the inbox, and the five seen at first, were not taken again.
    assert taken(mw) == [
        *BASELINE,
        ("Invoice 42", "succeeded"),
        ("Invoice 43", "succeeded"),
        ("Invoice old", "succeeded"),
    ]
    assert sorted(s["message"]["subject"] for s in graph.sent) == [
        "Fwd: Invoice 42",
        "Fwd: Invoice 43",
        "Fwd: Invoice old",
    ]


async def test_a_trigger_that_kept_a_uid_mark_goes_on_from_it(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    """A Graph trigger from before delta queries: what is above its UID mark is taken, once."""
    graph_target(mw, graph, keyed, token="good")
    mw.workflows.create(invoices({"action": "none"}))
    async with imap_folder(mw.targets, "Contoso", activity="trigger", folder="INBOX") as box:
        uidvalidity, _count = await box.select("INBOX")
        mark = max(await box.search_uids("ALL"))  # Invoice 5: the newest when the mark was kept
    with mw.db.session() as session:
        (state,) = session.scalars(select(TriggerStateRow)).all()
        state.uidvalidity, state.last_uid, state.baseline_at = uidvalidity, mark, datetime.now(UTC)
    graph.deliver(MAILBOX, raw("Invoice 6"), received=START + timedelta(hours=1))  # while stopped
    async with running(mw):
        await eventually(mw, lambda: ("Invoice 6", "succeeded") in taken(mw), "the mail above the mark")
        graph.deliver(MAILBOX, raw("Invoice 7"))
        await eventually(mw, lambda: ("Invoice 7", "succeeded") in taken(mw), "new mail")
        await more_looks(mw, graph)
    assert cursor(mw) is not None
    assert taken(mw) == [*BASELINE, ("Invoice 6", "succeeded"), ("Invoice 7", "succeeded")]
    assert sorted(s["message"]["subject"] for s in graph.sent) == ["Fwd: Invoice 6", "Fwd: Invoice 7"]


async def test_mail_seen_at_first_moved_out_and_back_in_is_taken(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    """As on IMAP, where it would come back with a new UID: mail moved in is new to the folder."""
    graph_target(mw, graph, keyed, token="good")
    workflow = mw.workflows.create(invoices({"action": "none"}))
    async with running(mw):
        await eventually(mw, lambda: mw.triggers.list_all(workflow.id)[0].status == "polling", "a look")
        three = id_of(graph, "Invoice 3")
        graph.folder(MAILBOX, "archive")["messages"][three] = graph.folder(MAILBOX, "inbox")["messages"].pop(
            three
        )
        await eventually(mw, lambda: len(taken(mw)) == 4, "the move out")
        move_in(graph, three)
        await eventually(mw, lambda: ("Invoice 3", "succeeded") in taken(mw), "the move back in")
        await more_looks(mw, graph)
    assert taken(mw) == [*BASELINE[:4], ("Invoice 3", "succeeded")]
    assert [s["message"]["subject"] for s in graph.sent] == ["Fwd: Invoice 3"]
