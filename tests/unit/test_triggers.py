"""Email triggers in documents: their shape, their checks, and conditions on a message."""

from __future__ import annotations

from typing import Any

import pytest

from mailwright.domain.triggers import Condition, Conditions, EmailTrigger, matches
from mailwright.domain.workflows import check_references, parse_document
from mailwright.errors import ValidationError
from mailwright.services.workflows import trigger_problems

MESSAGE: dict[str, Any] = {
    "uid": 7,
    "from": "Billing <billing@supplier.example>",
    "to": ["accounts@example.org"],
    "cc": [],
    "subject": "Invoice 2026-11 for ACME",
    "text": "Please find the invoice attached.\n",
    "html": None,
    "headers": [["X-Priority", "1 (Highest)"], ["Subject", "Invoice 2026-11 for ACME"]],
    "attachments": [{"file_name": "invoice.pdf", "content_type": "application/pdf", "size": 10}],
}


def when(**fields: Any) -> Conditions:
    return Conditions.model_validate(fields)


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        (when(), True),
        (when(all=[{"field": "subject", "value": "invoice"}]), True),  # contains, ignoring case
        (when(all=[{"field": "subject", "value": "invoice", "case_sensitive": True}]), False),
        (when(all=[{"field": "subject", "op": "equals", "value": "invoice 2026-11 for acme"}]), True),
        (when(all=[{"field": "subject", "op": "equals", "value": "Invoice"}]), False),
        (when(all=[{"field": "from", "op": "wildcard", "value": "*@supplier.example>"}]), True),
        (when(all=[{"field": "sender", "op": "regex", "value": r"billing@supplier\.example"}]), True),
        (when(all=[{"field": "to", "op": "equals", "value": "accounts@example.org"}]), True),
        (when(all=[{"field": "body", "value": "attached"}]), True),
        (when(all=[{"field": "header", "header": "x-priority", "op": "regex", "value": "^1"}]), True),
        (when(all=[{"field": "header", "header": "X-Missing", "value": "x"}]), False),
        (when(all=[{"field": "has_attachment"}]), True),
        (when(all=[{"field": "has_attachment", "value": False}]), False),
        (when(all=[{"field": "attachment_name", "op": "wildcard", "value": "*.pdf"}]), True),
        (when(all=[{"field": "subject", "value": "invoice", "negate": True}]), False),
        # all-of and any-of together
        (
            when(
                all=[{"field": "subject", "value": "invoice"}],
                any=[{"field": "from", "value": "nobody"}, {"field": "has_attachment"}],
            ),
            True,
        ),
        (
            when(
                all=[{"field": "subject", "value": "invoice"}],
                any=[{"field": "from", "value": "nobody"}, {"field": "body", "value": "nothing"}],
            ),
            False,
        ),
    ],
)
def test_conditions(conditions: Conditions, expected: bool) -> None:
    assert matches(conditions, MESSAGE) is expected


def test_conditions_on_a_message_with_nothing_parsed() -> None:
    bare: dict[str, Any] = {"uid": 1, "subject": "", "from": None, "headers": [], "attachments": []}
    assert matches(when(all=[{"field": "subject", "op": "equals", "value": "x"}]), bare) is False
    assert matches(when(all=[{"field": "has_attachment", "value": False}]), bare) is True


@pytest.mark.parametrize(
    ("condition", "words"),
    [
        ({"field": "header", "value": "x"}, "needs `header`"),
        ({"field": "subject", "header": "X", "value": "x"}, "only goes with field: header"),
        ({"field": "subject"}, "needs a text `value`"),
        ({"field": "subject", "op": "regex", "value": "("}, "does not compile"),
        ({"field": "has_attachment", "value": "yes"}, "true or false"),
        ({"field": "colour", "value": "x"}, "field"),
    ],
)
def test_bad_conditions_are_explained(condition: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Condition.model_validate(condition)


def test_after_success_move_needs_a_folder() -> None:
    with pytest.raises(ValueError, match="needs `folder`"):
        EmailTrigger.model_validate({"target": "x", "after_success": {"action": "move"}})
    with pytest.raises(ValueError, match="only goes with action: move"):
        EmailTrigger.model_validate({"target": "x", "after_success": {"action": "delete", "folder": "X"}})


DOCUMENT = """\
name: Invoices
triggers:
  - type: email
    target: {target}
    folder: {folder}
    conditions:
      all:
        - {{field: subject, op: contains, value: Invoice}}
    after_success: {{action: {action}{folder_part}}}
steps:
  - id: forward
    activity: send_email
    with:
      to: [accounts@example.org]
      subject: "Fwd: {{{{ trigger.message.subject }}}}"
      attachments: "{{{{ trigger.message.attachments }}}}"
"""


def document(
    target: str = "Inbox", folder: str = "INBOX", action: str = "move", to: str = "Processed"
) -> str:
    folder_part = f", folder: {to}" if action == "move" else ""
    return DOCUMENT.format(target=target, folder=folder, action=action, folder_part=folder_part)


def test_a_trigger_document_checks_clean() -> None:
    doc = parse_document(document())
    problems = check_references(doc, activities={"send_email"}, targets={"inbox"}, account_keys=set())
    assert problems == []
    assert trigger_problems(doc, {"Inbox": "imap"}) == []


def test_trigger_targets_must_exist_and_read_mail() -> None:
    doc = parse_document(document(target="Outbox"))
    problems = check_references(doc, activities={"send_email"}, targets={"Inbox"}, account_keys=set())
    assert problems == ["triggers[0].target: target 'Outbox' does not exist; known targets: Inbox"]
    assert (
        "needs an IMAP, POP3 or Microsoft Graph Endpoint target"
        in trigger_problems(doc, {"Outbox": "smtp"})[0]
    )


def test_pop3_triggers_cannot_move_or_pick_folders() -> None:
    (problem,) = trigger_problems(parse_document(document()), {"Inbox": "pop3"})
    assert "POP3 has no folders or flags, so move cannot be done" in problem
    (problem,) = trigger_problems(
        parse_document(document(folder="Archive", action="delete")), {"Inbox": "pop3"}
    )
    assert "POP3 reads only the inbox" in problem
    assert trigger_problems(parse_document(document(action="delete")), {"Inbox": "pop3"}) == []


def test_trigger_expressions_need_a_trigger() -> None:
    text = "name: t\nsteps:\n  - id: a\n    activity: set_variables\n"
    text += "    with: {s: '{{ trigger.message.subject }}'}\n"
    problems = check_references(
        parse_document(text), activities={"set_variables"}, targets=set(), account_keys=set()
    )
    assert problems == [
        "steps[0].with.s: trigger is only defined in runs started by an email trigger, "
        "and this workflow declares no triggers"
    ]


def test_a_bad_trigger_is_refused_with_its_place() -> None:
    with pytest.raises(ValidationError, match=r"triggers\[0\]"):
        parse_document(document().replace("op: contains", "op: resembles"))
