"""The Microsoft Graph Endpoint target sends through the Graph stand-in (tests/support/graph_server.py).

A static token source stands in for the OAuth2 key (the key types wire the real one):
these tests are about what Graph receives and how its answers become our errors.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from mailwright.domain.addresses import Address, parse_address
from mailwright.domain.message import Attachment, Importance, OutgoingMessage, build_mime
from mailwright.errors import TargetAuthError, TargetDeferredError, ValidationError
from mailwright.plugins import target_type
from mailwright.secrets import Secret
from mailwright.targets.graph import GraphSender, GraphSettings, settings_from_input
from mailwright.transport.base import Login
from mailwright.transport.graph.client import GraphPermissionError, retry_after_seconds
from tests.support.graph_server import ALL_ROLES, GraphServer

MAILBOX = "alice@contoso.example"


class StaticTokens:
    """A TokenSource handing out `tokens` in turn: the next one on each `refresh=True`."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.calls: list[bool] = []

    async def access_token(self, *, refresh: bool = False) -> Secret:
        self.calls.append(refresh)
        if refresh and len(self.tokens) > 1:
            self.tokens.pop(0)
        return Secret(self.tokens[0])


def login(*tokens: str) -> Login:
    return Login(key_name="contoso-graph", username="", password=Secret(""), tokens=StaticTokens(*tokens))


@pytest.fixture
def graph() -> Iterator[GraphServer]:
    with GraphServer(
        tokens={"good": ALL_ROLES, "no-send": ALL_ROLES - {"Mail.Send"}, "send-only": {"Mail.Send"}},
        users=[MAILBOX],
    ) as server:
        yield server


def settings(server: GraphServer, **values: Any) -> GraphSettings:
    return settings_from_input(
        {"mailbox": MAILBOX, "graph_url": server.base_url, "command_timeout": 20, **values}
    )


def addr(text: str) -> Address:
    return parse_address(text, field="to")


def mime(**overrides: Any) -> tuple[bytes, list[str]]:
    message = OutgoingMessage(
        **{
            "sender": addr(MAILBOX),
            "to": [addr("Bob Example <bob@example.org>")],
            "cc": [addr("carol@example.org")],
            "bcc": [addr("dave@example.org")],
            "reply_to": [addr("replies@example.org")],
            "subject": "Quarterly report ✓",
            "text": "Hello Bob",
            "html": "<p>Hello <b>Bob</b></p>",
            "headers": [("X-Campaign", "q3"), ("List-Unsubscribe", "<mailto:unsub@example.org>")],
            "importance": Importance.HIGH,
            **overrides,
        }
    )
    data = build_mime(message, message_id="<m1@contoso.example>", date=datetime.now(UTC), smtputf8=True)
    return data, [a.envelope() for a in message.recipients()]


async def send(
    server: GraphServer, data: bytes, recipients: list[str], who: Login | None, **values: Any
) -> Any:
    sender = GraphSender(settings(server, **values), target_name="Contoso", login=who)
    return await sender.send(
        sender=MAILBOX,
        recipients=[(r, False) for r in recipients],
        data=data,
        utf8=True,
        continue_if_one_address_valid=False,
    )


def test_the_type_is_registered_with_its_fields_and_cloud_urls() -> None:
    kind = target_type("graph")
    assert (kind.label, kind.protocol, kind.account_key_types) == (
        "Microsoft Graph Endpoint",
        "HTTPS",
        ("graph",),
    )
    assert {"mailbox", "cloud", "graph_url", "login_url", "save_to_sent_items"} <= set(
        kind.settings_model.model_fields
    )
    china = settings_from_input({"mailbox": MAILBOX, "cloud": "china"})
    assert (china.graph_base, china.login_base) == (
        "https://microsoftgraph.chinacloudapi.cn",
        "https://login.chinacloudapi.cn",
    )
    dod = settings_from_input(
        {"mailbox": MAILBOX, "cloud": "usgov-dod", "login_url": "https://login.example/"}
    )
    assert (dod.graph_base, dod.login_base) == ("https://dod-graph.microsoft.us", "https://login.example")
    assert dod.token_scope() == "https://dod-graph.microsoft.us/.default"
    with pytest.raises(ValidationError, match="plain http"):
        settings_from_input({"mailbox": MAILBOX, "graph_url": "http://graph.example.org"})
    with pytest.raises(ValidationError, match="mailbox is required"):
        settings_from_input({"cloud": "global"})
    view = kind.describe(china, target_name="Contoso", account_key="k")
    assert ("Mailbox", MAILBOX) in view.connection and "China" in dict(view.connection)["National cloud"]


async def test_send_mail_carries_every_field_graph_takes(graph: GraphServer) -> None:
    data, recipients = mime(attachments=[Attachment("notes.txt", b"small notes", "text/plain")])
    report = await send(graph, data, recipients, login("good"))

    assert [r["status"] for r in report.recipients] == ["accepted"] * 3 and report.code == 202
    (sent,) = graph.sent
    assert sent["via"] == "sendMail" and sent["saveToSentItems"] is True
    message = sent["message"]
    assert message["subject"] == "Quarterly report ✓"
    assert message["body"] == {"contentType": "html", "content": "<p>Hello <b>Bob</b></p>"}
    assert message["toRecipients"] == [
        {"emailAddress": {"address": "bob@example.org", "name": "Bob Example"}}
    ]
    assert message["ccRecipients"] == [{"emailAddress": {"address": "carol@example.org"}}]
    assert message["bccRecipients"] == [{"emailAddress": {"address": "dave@example.org"}}]
    assert message["replyTo"] == [{"emailAddress": {"address": "replies@example.org"}}]
    assert message["importance"] == "high" and message["internetMessageId"] == "<m1@contoso.example>"
    assert message["internetMessageHeaders"] == [{"name": "X-Campaign", "value": "q3"}]
    assert list(graph.attachments_of(sent)) == [("notes.txt", b"small notes")]
    assert any("List-Unsubscribe" in w for w in report.warnings)  # Graph takes X- headers only: said
    (request,) = graph.requests_to("POST", "/sendMail")
    assert request.path == f"/v1.0/users/{MAILBOX}/sendMail" and request.authorized
    assert len(graph.folder(MAILBOX, "sentitems")["messages"]) == 1


async def test_a_text_only_message_goes_as_text(graph: GraphServer) -> None:
    data, recipients = mime(html=None, cc=[], bcc=[], reply_to=[], headers=[], importance=Importance.NORMAL)
    await send(graph, data, recipients, login("good"), save_to_sent_items=False)
    message = graph.sent[0]["message"]
    assert message["body"] == {"contentType": "text", "content": "Hello Bob"}
    assert {"ccRecipients", "bccRecipients", "importance", "internetMessageHeaders"}.isdisjoint(message)
    assert graph.sent[0]["saveToSentItems"] is False and not graph.folder(MAILBOX, "sentitems")["messages"]


async def test_a_5_mb_attachment_goes_through_a_draft_and_an_upload_session(graph: GraphServer) -> None:
    big = os.urandom(5 * 1024 * 1024 + 123)
    data, recipients = mime(
        attachments=[
            Attachment("big.bin", big, "application/octet-stream"),
            Attachment("a.txt", b"a", "text/plain"),
        ]
    )
    marks: list[str] = []

    async def before_data() -> None:
        marks.append("sending")

    sender = GraphSender(settings(graph), target_name="Contoso", login=login("good"))
    report = await sender.send(
        sender=MAILBOX,
        recipients=[(r, False) for r in recipients],
        data=data,
        utf8=True,
        continue_if_one_address_valid=False,
        before_data=before_data,
    )

    assert report.code == 202 and marks == ["sending"]
    assert not graph.requests_to("POST", "/sendMail")
    (created,) = graph.requests_to("POST", f"/users/{MAILBOX}/messages")
    assert created.json["subject"] == "Quarterly report ✓" and "attachments" not in created.json
    uploads = [r for r in graph.requests if r.path.startswith("/upload/")]
    assert len(uploads) == 2 and not any(r.authorized for r in uploads)  # the upload URL takes no bearer
    assert all(r.size <= 4 * 1024 * 1024 for r in uploads)
    assert uploads[0].headers["content-range"] == f"bytes 0-{uploads[0].size - 1}/{len(big)}"
    assert len(graph.requests_to("POST", "/send")) == 1
    (sent,) = graph.sent
    assert sent["via"] == "draft" and dict(graph.attachments_of(sent)) == {"big.bin": big, "a.txt": b"a"}
    assert not graph.folder(MAILBOX, "drafts")["messages"]  # the draft was sent, so it left Drafts
    assert len(graph.folder(MAILBOX, "sentitems")["messages"]) == 1


async def test_a_large_message_without_a_sent_items_copy(graph: GraphServer) -> None:
    data, recipients = mime(attachments=[Attachment("big.bin", b"x" * (3 * 1024 * 1024), "")])
    await send(graph, data, recipients, login("good"), save_to_sent_items=False)
    (created,) = graph.requests_to("POST", f"/users/{MAILBOX}/messages")
    assert created.json["singleValueExtendedProperties"] == [{"id": "Boolean 0x0E01", "value": "true"}]
    assert not graph.folder(MAILBOX, "sentitems")["messages"] and len(graph.sent) == 1


async def test_a_refused_token_is_refreshed_once(graph: GraphServer) -> None:
    data, recipients = mime()
    who = login("expired", "good")
    await send(graph, data, recipients, who)
    assert who.tokens is not None and who.tokens.calls == [False, True]  # type: ignore[attr-defined]
    assert len(graph.sent) == 1

    again = login("expired", "revoked")
    with pytest.raises(TargetAuthError, match="refused the access token") as caught:
        await send(graph, data, recipients, again)
    assert again.tokens.calls == [False, True]  # type: ignore[union-attr]  # once, never a loop
    assert "revoked" not in str(caught.value) and "expired" not in str(caught.value.details())


async def test_a_missing_permission_is_named_with_where_to_grant_it(graph: GraphServer) -> None:
    data, recipients = mime()
    with pytest.raises(GraphPermissionError) as caught:
        await send(graph, data, recipients, login("no-send"))
    error = caught.value
    assert error.permission == "Mail.Send" and "Mail.Send" in error.message
    assert error.hint is not None and "API permissions" in error.hint and "admin consent" in error.hint
    assert not error.transient and not graph.sent

    big, recipients = mime(attachments=[Attachment("big.bin", b"x" * (4 * 1024 * 1024), "")])
    with pytest.raises(GraphPermissionError, match=r"Mail\.ReadWrite"):
        await send(graph, big, recipients, login("send-only"))


async def test_throttling_defers_with_retry_after(graph: GraphServer) -> None:
    data, recipients = mime()
    graph.throttle(status=429, retry_after="7")
    with pytest.raises(TargetDeferredError) as caught:
        await send(graph, data, recipients, login("good"))
    assert caught.value.transient and caught.value.retry_after == 7 and caught.value.smtp_code == 429
    assert caught.value.details()["retry_after"] == 7
    graph.throttle(status=503, retry_after=None)
    with pytest.raises(TargetDeferredError) as busy:
        await send(graph, data, recipients, login("good"))
    assert busy.value.retry_after is None and busy.value.transient
    await send(graph, data, recipients, login("good"))  # then it goes
    assert len(graph.sent) == 1


async def test_a_target_without_a_token_says_which_key_it_needs(graph: GraphServer) -> None:
    data, recipients = mime()
    with pytest.raises(TargetAuthError, match="no OAuth2 account key") as caught:
        await send(graph, data, recipients, None)
    assert caught.value.hint is not None and "Microsoft Graph Credentials" in caught.value.hint
    assert not graph.requests


def test_retry_after_takes_seconds_or_a_date() -> None:
    assert retry_after_seconds("12") == 12
    assert retry_after_seconds("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_no_token_or_upload_url_reaches_the_logs(
    graph: GraphServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data, recipients = mime(attachments=[Attachment("big.bin", b"y" * (3 * 1024 * 1024 + 5), "")])
    await send(graph, data, recipients, login("stale-token-123", "good"))
    with pytest.raises(TargetAuthError) as caught:
        await send(graph, data, recipients, login("stale-token-123", "revoked-token-456"))
    shown = caplog.text + str(caught.value) + repr(caught.value.details())
    assert "refreshing it once" in caplog.text
    for secret in ("stale-token-123", "revoked-token-456", "good", "authtoken="):
        assert secret not in shown, secret
