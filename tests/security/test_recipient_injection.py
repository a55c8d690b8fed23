"""Finding 10: one address per entry.

A to/cc/bcc/reply_to entry holding CR or LF is refused everywhere (422 in the API,
exit 2 in the CLI, a failed step in a workflow) with a message naming the field and
the entry. Commas still separate addresses in text a user typed, but not in what an
expression produced: `to: ["{{ inputs.x }}"]` with x = "a@x.org, evil@y.example" does
not become two recipients.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from mailwright.domain.addresses import RenderedText, parse_address_list
from mailwright.errors import ValidationError
from tests.integration.conftest import Targets
from tests.support.cli import CLI, assert_error, assert_ok
from tests.support.smtpserver import SMTPServerFactory

INJECTED = ["b@x.org\r\nevil@y.example", "b@x.org\nevil@y.example", "b@x.org\revil@y.example"]


@pytest.mark.parametrize("entry", INJECTED)
def test_an_entry_with_a_line_break_is_refused_naming_field_and_entry(entry: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_address_list(["ok@x.org", entry], field="cc")
    assert refused.value.field == "cc"
    assert "cc[1]" in refused.value.message and "line break" in refused.value.message
    assert repr(entry) in refused.value.message


def test_commas_in_typed_text_still_separate_but_not_in_rendered_text() -> None:
    typed = parse_address_list(["a@x.org, b@y.org"], field="to")
    assert [a.addr for a in typed] == ["a@x.org", "b@y.org"]
    with pytest.raises(ValidationError, match=r"to\[0\]: an expression gave .* holds 2 addresses"):
        parse_address_list([RenderedText("a@x.org, evil@y.example")], field="to")
    (one,) = parse_address_list([RenderedText('"Doe, Jane" <jane@x.org>')], field="to")
    assert one.addr == "jane@x.org"


def test_api_refuses_a_line_break_in_an_entry_with_422(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none", display_name="Relay").display_name
    for field in ("to", "cc", "bcc", "reply_to"):
        body: dict[str, Any] = {"target": target, "from": "robot@example.org", "subject": "s", "body": "b"}
        body["to"] = ["ok@example.org"]
        body[field] = [*body.get(field, []), INJECTED[0]] if field == "to" else [INJECTED[0]]
        answer = api.post("/api/v1/send-email", json=body)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert field in error["message"] and "line break" in error["message"], error
    assert server.messages == []


def test_cli_refuses_a_line_break_in_an_entry_with_exit_2(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    targets.target(server, security="none", display_name="Relay")
    result = cli(
        "send",
        "--target",
        "Relay",
        "--from",
        "robot@example.org",
        "--to",
        INJECTED[0],
        "--subject",
        "s",
        "--body",
        "b",
    )
    assert_error(result, 2, "to", "line break")
    ok = cli(
        "send",
        "--target",
        "Relay",
        "--from",
        "robot@example.org",
        "--to",
        "a@example.org, b@example.org",
        "--subject",
        "s",
        "--body",
        "b",
    )
    assert_ok(ok)
    assert sorted(server.messages[0].rcpt_tos) == ["a@example.org", "b@example.org"]


def _workflow(target: str) -> dict[str, Any]:
    return {
        "name": "Notify",
        "inputs": {"x": {"type": "string"}},
        "target": target,
        "steps": [
            {
                "id": "notify",
                "activity": "send_email",
                "with": {"from": "robot@example.org", "to": ["{{ inputs.x }}"], "subject": "s", "body": "b"},
            }
        ],
    }


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("a@x.org, evil@y.example", ["to[0]", "an expression gave", "2 addresses"]),
        ("a@x.org\r\nevil@y.example", ["to[0]", "line break"]),
    ],
)
def test_a_rendered_entry_never_becomes_several_recipients(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory, value: str, words: list[str]
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none", display_name="Relay").display_name
    assert api.post("/api/v1/workflows", json={"document": _workflow(target)}).status_code == 201
    started = api.post(
        "/api/v1/workflows/Notify/start", json={"inputs": {"x": value}, "wait": True, "timeout": 20}
    )
    assert started.status_code == 200, started.text
    run = started.json()
    assert run["status"] == "failed", run
    (step,) = run["steps"]
    assert step["status"] == "failed", step
    text = str(step)
    for word in words:
        assert word in text, text
    assert server.messages == []
    # One address from the same expression is sent as usual.
    started = api.post(
        "/api/v1/workflows/Notify/start", json={"inputs": {"x": "a@x.org"}, "wait": True, "timeout": 20}
    )
    assert started.json()["status"] == "succeeded", started.text
    assert server.wait_for(1)[0].rcpt_tos == ["a@x.org"]
