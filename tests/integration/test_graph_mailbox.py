"""Reading, moving, marking and deleting mail on a Microsoft Graph Endpoint target, as on IMAP.

read_email's own code (`read_messages`) and the folder session move_email, mark_email
and delete_email open (`imap_folder`) run against the Graph stand-in: the same inputs
and outputs as on an IMAP target, UIDs included.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from mailwright.activities.mailbox import imap_folder
from mailwright.activities.read_email import ReadEmailInput, read_messages
from mailwright.errors import ValidationError
from mailwright.services.app import Services
from mailwright.transport.graph import mailbox as graph_mailbox
from mailwright.transport.graph.client import GraphPermissionError, GraphSyncResetError
from tests.integration.test_graph_send import MAILBOX
from tests.integration.test_graph_target import graph_target
from tests.support.graph_keys import GraphKeys, graph_oauth, keyed
from tests.support.graph_server import GraphServer

__all__ = ["graph_oauth", "keyed"]  # the fixtures, used here by name

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def raw(subject: str, sender: str = "Bob <bob@example.org>", body: str = "Hello") -> bytes:
    lines = [
        f"From: {sender}",
        f"To: {MAILBOX}",
        f"Subject: {subject}",
        f"Message-ID: <{subject.replace(' ', '.')}@example.org>",
        f"X-Ticket: {subject[-1]}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        body,
        "",
    ]
    return "\r\n".join(lines).encode()


@pytest.fixture
def graph(keyed: GraphKeys) -> Iterator[GraphServer]:
    with GraphServer(tokens=keyed.roles, users=[MAILBOX]) as server:
        for n in range(1, 6):
            server.deliver(
                MAILBOX,
                raw(f"Invoice {n}", "Carol <carol@example.org>" if n % 2 else "Bob <bob@example.org>"),
                received=START + timedelta(minutes=n),
                is_read=n == 1,
            )
        yield server


async def test_read_email_filters_orders_and_pages_like_imap(
    mw: Services, graph: GraphServer, keyed: GraphKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph_mailbox, "PAGE", 2)  # five messages: three pages
    graph_target(mw, graph, keyed, token="good")

    everything = await read_messages(mw.targets, "Contoso", ReadEmailInput(order="oldest"))
    assert [m["subject"] for m in everything["messages"]] == [f"Invoice {n}" for n in range(1, 6)]
    assert everything["matched"] == 5 and everything["folder"] == "INBOX"
    first = everything["messages"][0]
    assert first["text"].strip() == "Hello" and first["message_id"] == "<Invoice.1@example.org>"
    uids = [m["uid"] for m in everything["messages"]]
    assert uids == sorted(uids) and all(isinstance(u, int) and u > 0 for u in uids)
    assert len([r for r in graph.requests if r.path.endswith("/messages") and r.method == "GET"]) >= 3

    unseen_from_carol = await read_messages(
        mw.targets, "Contoso", ReadEmailInput.model_validate({"unseen": True, "from": "carol", "max": 10})
    )
    assert [m["subject"] for m in unseen_from_carol["messages"]] == ["Invoice 5", "Invoice 3"]  # newest first
    (listing, *_) = [r for r in graph.requests if "$filter" in r.query and "isRead" in r.query["$filter"]]
    assert (
        listing.query["$filter"] == "isRead eq false"
    )  # the server filters what maps; "from" is matched here

    by_header = await read_messages(mw.targets, "Contoso", ReadEmailInput(header={"X-Ticket": "4"}))
    assert [m["subject"] for m in by_header["messages"]] == ["Invoice 4"]
    since = await read_messages(
        mw.targets, "Contoso", ReadEmailInput(since=START.date(), subject="invoice 2")
    )
    assert [m["subject"] for m in since["messages"]] == ["Invoice 2"]
    assert everything["uidvalidity"] == since["uidvalidity"]  # the same folder, the same validity


async def test_read_email_marks_read_and_moves_to_a_new_folder(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    graph_target(mw, graph, keyed, token="good")
    marked = await read_messages(mw.targets, "Contoso", ReadEmailInput(unseen=True, max=2, after="mark_read"))
    assert [m["subject"] for m in marked["messages"]] == ["Invoice 5", "Invoice 4"]
    inbox = graph.folder(MAILBOX, "inbox")["messages"]
    assert sorted(m["subject"] for m in inbox.values() if not m["isRead"]) == ["Invoice 2", "Invoice 3"]

    moved = await read_messages(
        mw.targets, "Contoso", ReadEmailInput(subject="Invoice 3", after="move", move_to="Processed/2026")
    )
    assert moved["count"] == 1
    processed = graph.folder(MAILBOX, "2026")
    assert [m["subject"] for m in processed["messages"].values()] == ["Invoice 3"]
    parent = graph.folder(MAILBOX, "Processed")
    assert processed["parentId"] == parent["id"]


async def test_uids_from_one_step_move_mark_and_delete_in_another(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    graph_target(mw, graph, keyed, token="good")
    read = await read_messages(mw.targets, "Contoso", ReadEmailInput(order="oldest"))
    uid = {m["subject"]: m["uid"] for m in read["messages"]}
    validity = read["uidvalidity"]

    async with imap_folder(
        mw.targets, "Contoso", activity="mark_email", folder="INBOX", uidvalidity=validity
    ) as box:
        await box.add_flags([uid["Invoice 2"]], ["\\Flagged"])
        await box.remove_flags([uid["Invoice 1"]], ["\\Seen"])
    inbox = {m["subject"]: m for m in graph.folder(MAILBOX, "inbox")["messages"].values()}
    assert inbox["Invoice 2"]["flag"] == {"flagStatus": "flagged"} and inbox["Invoice 1"]["isRead"] is False

    async with imap_folder(mw.targets, "Contoso", activity="move_email", folder="INBOX") as box:
        assert await box.create_folder("archive") is False  # a well-known folder exists already
        await box.move([uid["Invoice 2"], uid["Invoice 4"]], "Archive")
    archived = graph.folder(MAILBOX, "archive")["messages"].values()
    assert sorted(m["subject"] for m in archived) == ["Invoice 2", "Invoice 4"]

    async with imap_folder(mw.targets, "Contoso", activity="read_email", folder="archive") as box:
        # The UID a message had in the inbox is its UID in the archive too (immutable ids, arrival time).
        assert await box.search_uids("ALL") == [uid["Invoice 2"], uid["Invoice 4"]]

    async with imap_folder(mw.targets, "Contoso", activity="delete_email", folder="INBOX") as box:
        await box.delete([uid["Invoice 5"], uid["Invoice 4"]])  # Invoice 4 is not here: ignored
    assert sorted(m["subject"] for m in graph.folder(MAILBOX, "inbox")["messages"].values()) == [
        "Invoice 1",
        "Invoice 3",
    ]


async def test_new_mail_above_the_mark_is_found_as_the_trigger_looks_for_it(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    graph_target(mw, graph, keyed, token="good")
    async with imap_folder(mw.targets, "Contoso", activity="trigger", folder="INBOX") as box:
        assert box.uidnext is not None
        mark = box.uidnext - 1
        assert max(await box.search_uids("ALL")) <= mark
        assert await box.search_uids(f"UID {mark + 1}:*") == []
    later = graph.deliver(MAILBOX, raw("Invoice 6"), received=START + timedelta(hours=1))
    async with imap_folder(mw.targets, "Contoso", activity="trigger", folder="INBOX") as box:
        newer = [u for u in await box.search_uids(f"UID {mark + 1}:*") if u > mark]
        assert len(newer) == 1
        fetched = await box.fetch_rfc822(newer)
    assert b"Subject: Invoice 6" in fetched[newer[0]] and later in graph.folder(MAILBOX, "inbox")["messages"]


async def test_unknown_folders_and_missing_permissions_say_what_to_do(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    graph_target(mw, graph, keyed, token="good")
    with pytest.raises(ValidationError, match="no folder 'Nowhere'"):
        await read_messages(mw.targets, "Contoso", ReadEmailInput(folder="Nowhere"))
    with pytest.raises(ValidationError, match="not available on Microsoft Graph"):
        await read_messages(mw.targets, "Contoso", ReadEmailInput(larger_than=10))

    graph_target(mw, graph, keyed, token="read-only", name="Reader")
    with pytest.raises(GraphPermissionError, match=r"Mail\.ReadWrite") as caught:
        await read_messages(mw.targets, "Reader", ReadEmailInput(after="mark_read"))
    assert caught.value.hint is not None and "admin consent" in caught.value.hint


async def test_delta_queries_give_arrivals_moves_in_and_removals(
    mw: Services, graph: GraphServer, keyed: GraphKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph_mailbox, "DELTA_PAGE", 2)
    graph_target(mw, graph, keyed, token="good")
    old = graph.deliver(MAILBOX, raw("Old report"), folder="archive", received=START - timedelta(days=30))
    async with imap_folder(mw.targets, "Contoso", activity="trigger", folder="INBOX") as box:
        assert isinstance(box, graph_mailbox.GraphMailbox)
        baseline = await box.changes("INBOX")
        assert len(baseline.changed) == 5 and not baseline.removed and "$deltatoken=" in baseline.cursor
        assert len(graph.requests_to("GET", "/messages/delta")) == 3  # five messages, two a page
        gone_uid, gone_id = baseline.changed[0]

        fresh = graph.deliver(MAILBOX, raw("Invoice 9"))
        inbox = graph.folder(MAILBOX, "inbox")["messages"]
        inbox[old] = graph.folder(MAILBOX, "archive")["messages"].pop(old)  # moved in by a mail client
        await box.delete([gone_uid])
        later = await box.changes("INBOX", baseline.cursor)
        assert sorted(i for _, i in later.changed) == sorted([fresh, old]) and later.removed == [gone_id]
        # The moved-in message arrived long ago: a mark by UID would miss it, the delta does not.
        assert min(u for u, _ in later.changed) < baseline.changed[-1][0]
        assert later.cursor != baseline.cursor

        nothing = await box.changes("INBOX", later.cursor)
        assert nothing.changed == [] and nothing.removed == []
        graph.expire_delta_links()
        with pytest.raises(GraphSyncResetError, match="sync state has expired"):
            await box.changes("INBOX", nothing.cursor)
