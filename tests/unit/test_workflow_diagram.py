"""The diagram's data: what starts a workflow and each step's condition, loop and failure rule, in words."""

from __future__ import annotations

from mailwright.domain.workflows import parse_document
from mailwright.web.workflow_diagram import StartKind, diagram

DOCUMENT = """\
name: Diagrammed
triggers:
  - type: email
    target: Inbox
    folder: Bills
    enabled: false
    conditions:
      all:
        - {field: header, header: X-Priority, op: equals, value: "1"}
        - {field: has_attachment, value: false}
      any:
        - {field: from, op: wildcard, value: "*@supplier.example", negate: true}
        - {field: subject, op: regex, value: "^Inv"}
schedules:
  - {cron: "0 7 * * 1-5", inputs: {who: a@example.org}}
steps:
  - id: one
    activity: send_email
    skip_execution: true
    retries: 0
  - id: each
    activity: send_email
    for_each: [a, {b: 1}, c, d, e]
    if: "{{ inputs.go }}"
    target: Relay
"""


def test_starts_say_what_starts_the_workflow_and_live_flags_win() -> None:
    drawn = diagram(parse_document(DOCUMENT), schedules_enabled={0: False}, triggers_enabled={0: True})
    email, schedule, manual = drawn.starts
    assert [s.kind for s in drawn.starts] == [StartKind.EMAIL, StartKind.SCHEDULE, StartKind.MANUAL]
    assert (
        email.title == "New mail in Inbox (trigger 0)" and email.enabled
    )  # the live flag, not the document's
    assert email.details == (
        "Folder Bills",
        "When header X-Priority is “1” and it has no attachment",
        "When any of: from not matches “*@supplier.example”; subject matches the pattern “^Inv”",
        "After success: left as it is",
    )
    assert schedule.title == "Schedule 0: cron 0 7 * * 1-5 (UTC)" and not schedule.enabled
    assert schedule.details == ('Inputs: {"who": "a@example.org"}',)
    assert manual.title == "By hand or through the API" and manual.enabled


def test_steps_carry_their_condition_loop_and_failure_rule() -> None:
    drawn = diagram(parse_document(DOCUMENT))
    one, each = drawn.steps
    assert (one.number, one.id, one.skipped, one.retries, one.condition, one.loop) == (
        1,
        "one",
        True,
        0,
        None,
        None,
    )
    assert each.condition == "inputs.go"  # without its braces
    assert each.loop == '5 items: a, {"b": 1}, c and 2 more'
    assert each.target == "Relay" and not each.continues_on_failure and each.max_items == 500
    assert drawn.summary == (
        "2 steps, run one after the other (1 with a condition; 1 repeated). "
        "Started by: New mail in Inbox (trigger 0), Schedule 0: cron 0 7 * * 1-5 (UTC), "
        "By hand or through the API."
    )
