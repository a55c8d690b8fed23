"""Workflow documents: YAML/JSON parsing, round trips, located errors, inputs, references."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwright.domain.workflows import (
    DocumentFormat,
    InputType,
    Step,
    WorkflowDocument,
    check_references,
    coerce_inputs,
    dump_document,
    parse_document,
    references,
    validate_cron,
)
from mailwright.errors import ValidationError

SAMPLE = """\
name: Alert and follow up
description: Send an alert, then a follow-up threaded on it
inputs:
  recipient: {type: string, default: ops@example.org, description: who gets the alert}
  count: {type: integer, default: 3}
target: Local sandbox          # optional workflow-level target (by display name)
account_key: null              # optional override of the target's default key
schedules:
  - {cron: "0 7 * * 1-5", enabled: true, inputs: {recipient: a@example.org}}
steps:
  - id: alert
    activity: send_email
    with:
      from: robot@example.org
      to: ["{{ inputs.recipient }}"]
      subject: "Alert {{ inputs.count }}"
      body: "Something happened"
  - id: followup
    activity: send_email
    if: "{{ steps.alert.status == 'succeeded' }}"
    with:
      to: ["second@example.org"]
      subject: "Re: Alert"
      in_reply_to: "{{ steps.alert.output.message_id }}"
  - id: each
    activity: set_variables
    for_each: "{{ ['a', 'b'] }}"
    with: {value: "{{ item }}"}
    continue_on_failure: false
    skip_execution: false
    timeout: 180
    target: Other target
    account_key: other-key
"""

KNOWN: dict[str, Any] = {
    "activities": {"send_email", "set_variables"},
    "targets": {"Local sandbox", "Other target"},
    "account_keys": {"other-key"},
}


def sample() -> WorkflowDocument:
    return parse_document(SAMPLE, filename="alert.yaml")


def with_step(extra: str) -> str:
    """A minimal YAML document whose only step has `extra` lines (indented 4)."""
    return "name: t\nsteps:\n  - id: a\n    activity: send_email\n" + extra


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def test_the_sample_parses() -> None:
    doc = sample()
    assert doc.name == "Alert and follow up"
    assert doc.target == "Local sandbox"
    assert doc.account_key is None
    assert doc.inputs["recipient"].type is InputType.STRING
    assert doc.inputs["recipient"].default == "ops@example.org"
    assert doc.inputs["recipient"].description == "who gets the alert"
    assert doc.inputs["count"].type is InputType.INTEGER
    assert not doc.inputs["count"].required
    assert doc.schedules[0].cron == "0 7 * * 1-5"
    assert doc.schedules[0].enabled
    assert doc.schedules[0].inputs == {"recipient": "a@example.org"}
    alert, followup, each = doc.steps
    assert alert.with_["to"] == ["{{ inputs.recipient }}"]
    assert alert.if_ is None
    assert (alert.timeout, alert.retries, alert.max_items) == (180, 3, 500)
    assert followup.if_ == "{{ steps.alert.status == 'succeeded' }}"
    assert each.for_each == "{{ ['a', 'b'] }}"
    assert (each.target, each.account_key) == ("Other target", "other-key")
    assert not each.continue_on_failure
    assert not each.skip_execution


def test_json_and_yaml_give_the_same_document() -> None:
    as_json = json.dumps(yaml.safe_load(SAMPLE))
    assert parse_document(as_json) == sample()
    assert parse_document(as_json, filename="alert.json") == sample()


def test_format_follows_the_extension_then_the_content() -> None:
    flow = "{name: t, steps: [{id: a, activity: send_email}]}"  # YAML flow style, not JSON
    assert parse_document(flow).steps[0].id == "a"
    with pytest.raises(ValidationError, match="line 1, column 2"):
        parse_document(flow, filename="t.json")


def test_yaml_scalars_follow_yaml_1_2() -> None:
    doc = parse_document(
        with_step(
            "    with:\n"
            "      answer: yes\n"
            "      switch: off\n"
            "      date: 2024-01-01\n"
            "      time: 1:30\n"
            "      octal: 0o17\n"
            "      padded: 012\n"
            "      flag: true\n"
            "      nothing: ~\n"
            "      ratio: 1.5e3\n"
        )
    )
    assert doc.steps[0].with_ == {
        "answer": "yes",
        "switch": "off",
        "date": "2024-01-01",
        "time": "1:30",
        "octal": 15,
        "padded": 12,
        "flag": True,
        "nothing": None,
        "ratio": 1500.0,
    }


def test_nulls_for_optional_sections_mean_empty() -> None:
    doc = parse_document(
        "name: t\ndescription:\ninputs:\nschedules:\ntriggers:\n"
        "steps:\n  - id: a\n    activity: x\n    with:\n"
    )
    assert (doc.description, doc.inputs, doc.schedules, doc.triggers, doc.steps[0].with_) == (
        "",
        {},
        [],
        [],
        {},
    )


def test_email_triggers_are_read_and_unknown_keys_named() -> None:
    doc = parse_document("name: t\ntriggers:\n  - {type: email, target: Inbox}\n" + with_step("")[8:])
    (trigger,) = doc.triggers
    assert (trigger.target, trigger.folder, trigger.after_success.action.value) == ("Inbox", "INBOX", "none")
    with pytest.raises(ValidationError, match="mailbox"):
        parse_document("name: t\ntriggers:\n  - {target: x, mailbox: inbox}\n" + with_step("")[8:])


# --------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_dump_then_parse_round_trips(fmt: DocumentFormat) -> None:
    doc = sample()
    text = dump_document(doc, fmt)
    assert parse_document(text, filename=f"x.{fmt}") == doc
    assert parse_document(text) == doc


def test_dumps_use_the_document_keys() -> None:
    doc = sample()
    data = json.loads(dump_document(doc, "json"))
    assert "with" in data["steps"][0] and "with_" not in data["steps"][0]
    assert data["steps"][1]["if"] == "{{ steps.alert.status == 'succeeded' }}"
    assert "retries" not in data["steps"][0]  # keys not written stay out
    text = dump_document(doc, "yaml")
    assert "\n  with:\n" in text and "\n  if: " in text


def test_tricky_text_round_trips_through_yaml() -> None:
    values = {
        "yes": "yes",
        "octal": "0o17",
        "date": "2024-01-01",
        "padded": "012",
        "null": "null",
        "empty": "",
        "tilde": "~",
        "body": "Line one\nline two\n\n  indented: colon\n",
        "trailing": "spaces  \n",
        "expr": "{{ inputs.x }}",
        "star": "*alias",
        "number": "1e3",
        "breaks": "a\x85b\u2028c\rd",
    }
    doc = WorkflowDocument(name="t", steps=[Step(id="a", activity="send_email", with_=values)])
    formats: tuple[DocumentFormat, ...] = ("yaml", "json")
    for fmt in formats:
        assert parse_document(dump_document(doc, fmt)).steps[0].with_ == values


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=4), st.text(max_size=40))
def test_any_plain_data_round_trips(values: dict[str, Any], description: str) -> None:
    doc = WorkflowDocument(
        name="t", description=description, steps=[Step(id="a", activity="send_email", with_=values)]
    )
    assert parse_document(dump_document(doc, "yaml")) == doc
    assert parse_document(dump_document(doc, "json")) == doc


# --------------------------------------------------------------------------------------
# Errors name where they are
# --------------------------------------------------------------------------------------


def test_duplicate_step_ids() -> None:
    text = with_step("  - id: a\n    activity: send_email\n")
    with pytest.raises(ValidationError) as info:
        parse_document(text)
    assert "step id 'a' is used by steps[0] and steps[1]" in info.value.message
    assert info.value.message.startswith("line 2: steps: ")
    assert info.value.field == "steps"


@pytest.mark.parametrize("bad", ["send-alert", "1st", "with space", "é"])
def test_step_ids_must_be_identifiers(bad: str) -> None:
    text = f"name: t\nsteps:\n  - id: '{bad}'\n    activity: send_email\n"
    with pytest.raises(ValidationError, match=r"steps\[0\]\.id: step id .* is not an identifier") as info:
        parse_document(text)
    assert info.value.field == "steps[0].id"
    assert "line 3" in info.value.message


def test_unknown_key_lists_the_allowed_keys() -> None:
    with pytest.raises(ValidationError) as info:
        parse_document(with_step("    whith: {to: x}\n"))
    message = info.value.message
    assert message.startswith("line 5: steps[0]: unknown key 'whith'; did you mean 'with'?")
    assert "Allowed keys: id, activity, if, for_each, max_items, with, target, account_key" in message
    assert info.value.field == "steps[0].whith"


def test_unknown_top_level_and_input_keys() -> None:
    with pytest.raises(ValidationError, match=r"the document: unknown key 'stepz'.*Allowed keys: name"):
        parse_document("name: t\nstepz: []\n" + with_step("")[8:])
    with pytest.raises(
        ValidationError, match=r"line 3: inputs\.x: unknown key 'defualt'; did you mean 'default'"
    ):
        parse_document("name: t\ninputs:\n  x: {type: string, defualt: a}\n" + with_step("")[8:])


@pytest.mark.parametrize(
    ("cron", "words"),
    [
        ("0 7 * *", "has 4 fields; it needs 5: minute hour day-of-month month day-of-week"),
        ("@daily", "has 1 field; it needs 5"),
        ("75 * * * *", "the minute field has 75, outside 0-59"),
        ("* 24 * * *", "the hour field has 24, outside 0-23"),
        ("* * 0 * *", "the day of month field has 0, outside 1-31"),
        ("* * * 13 *", "the month field has 13, outside 1-12"),
        ("* * * * 8", "the day of week field has 8, outside 0-7"),
        ("*/0 * * * *", "step '/0'"),
        ("5-1 * * * *", "runs backwards"),
        ("x * * * *", "'x', which is not a number"),
        ("1,,2 * * * *", "empty item"),
    ],
)
def test_bad_cron_is_explained(cron: str, words: str) -> None:
    text = f'name: t\nschedules:\n  - cron: "{cron}"\n' + with_step("")[8:]
    with pytest.raises(ValidationError, match=r"^line 3: schedules\[0\]\.cron: ") as info:
        parse_document(text)
    assert words in info.value.message


def test_good_cron_is_normalised() -> None:
    assert validate_cron("0  7 * *   MON-FRI") == "0 7 * * MON-FRI"
    for good in ("*/15 * * * *", "0 0 1,15 * *", "0 9-17/2 * JAN-jun 0", "59 23 31 12 7"):
        assert validate_cron(good) == good


def test_steps_are_required_and_not_empty() -> None:
    with pytest.raises(ValidationError, match="steps: a workflow needs at least one step"):
        parse_document("name: t\nsteps: []\n")
    with pytest.raises(ValidationError, match="the document: 'steps' is required") as info:
        parse_document("name: t\n")
    assert info.value.hint


def test_yaml_syntax_errors_give_the_line() -> None:
    text = "name: t\nsteps:\n  - id: a\n    activity: send_email\n   with: {to: x}\n"
    with pytest.raises(ValidationError, match=r"^line 5, column 4: ") as info:
        parse_document(text)
    assert "indentation" in (info.value.hint or "")


def test_json_syntax_errors_give_the_line() -> None:
    with pytest.raises(ValidationError, match=r"^line 3, column 3: "):
        parse_document('{\n  "name": "t"\n  "steps": []\n}')


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name: &n t\ndescription: *n\nsteps: []\n", "line 2, column 14: aliases (*name) are not supported"),
        ("name: t\nname: u\nsteps: []\n", "line 2, column 1: duplicate key 'name' (first on line 1)"),
        ("name: t\n1: x\nsteps: []\n", "line 2, column 1: mapping keys must be text"),
        ("name: !!binary aGk=\nsteps: []\n", "line 1, column 7: could not determine a constructor"),
        ("name: !!python/object:os.system x\nsteps: []\n", "could not determine a constructor"),
        ('{"name": "t", "name": "u", "steps": []}', "duplicate key 'name'"),
        ("name: t\nsteps: []\n", "steps: a workflow needs at least one step"),
        ("- a\n- b\n", "must be a mapping with at least name and steps; this one is a list"),
        ("", "the document is empty"),
        ("# only a comment\n", "the document is empty"),
    ],
)
def test_documents_outside_plain_data_are_refused(text: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_document(text)
    assert words in info.value.message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"name": NaN, "steps": []}', "NaN is not a JSON value"),
        ('{"name": "t", "name": "u", "steps": []}', "duplicate key 'name'; keep only one"),
        ('{"name": "t", "steps": [}', "line 1, column 25: Expecting value"),
    ],
)
def test_json_files_are_read_as_json(text: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_document(text, filename="w.json")
    assert words in info.value.message


def test_huge_documents_are_refused() -> None:
    with pytest.raises(ValidationError, match="the limit is 1,000,000"):
        parse_document("name: t\n" + "#" * 1_000_001)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("    timeout: 0\n", r"steps\[0\]\.timeout: input should be greater than 0"),
        ("    timeout: 86401\n", r"steps\[0\]\.timeout: input should be less than or equal to 86400"),
        ("    retries: 21\n", r"steps\[0\]\.retries: input should be less than or equal to 20"),
        ("    max_items: 0\n", r"steps\[0\]\.max_items: input should be greater than or equal to 1"),
        ("    with: [a]\n", r"steps\[0\]\.with: input should be a valid dictionary"),
        ("    if: true\n", r"steps\[0\]\.if: 'if' must be an expression in quotes"),
        ("    for_each: 3\n", r"steps\[0\]\.for_each: 'for_each' must be a list"),
        (
            "    for_each: inputs.items\n",
            r"steps\[0\]\.for_each: 'for_each' must be a list, or one \{\{ \}\} expr",
        ),
        ("    target: ''\n", r"steps\[0\]\.target: string should have at least 1 character"),
    ],
)
def test_step_field_errors(extra: str, words: str) -> None:
    with pytest.raises(ValidationError, match=r"^line 5: " + words):
        parse_document(with_step(extra))


def test_input_declarations_are_checked() -> None:
    base = with_step("")[8:]
    with pytest.raises(ValidationError, match=r"inputs\.count: the default 'three' is not of type integer"):
        parse_document("name: t\ninputs:\n  count: {type: integer, default: three}\n" + base)
    with pytest.raises(ValidationError, match="input name 'my-input' is not an identifier"):
        parse_document("name: t\ninputs:\n  my-input: {type: string}\n" + base)
    with pytest.raises(ValidationError, match=r"inputs\.x\.type: input should be 'string', 'integer'"):
        parse_document("name: t\ninputs:\n  x: {type: secret}\n" + base)


def test_errors_name_the_file() -> None:
    with pytest.raises(ValidationError, match=r"^alert\.yaml: line 1: name: "):
        parse_document("name: ''\nsteps: []\n", filename="alert.yaml")


def test_only_the_first_problem_is_described_and_the_rest_counted() -> None:
    with pytest.raises(ValidationError, match=r"; and 2 more problems$"):
        parse_document(with_step("    timeout: 0\n    retries: -1\n    max_items: 0\n"))


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------

INPUTS_DOC = """\
name: inputs
inputs:
  text: {type: string}
  count: {type: integer, default: 3}
  ratio: {type: number, default: 0.5}
  flag: {type: boolean, default: false}
  tags: {type: list, default: []}
  extra: {type: object, default: {}}
steps:
  - {id: a, activity: send_email}
"""


def test_text_from_the_command_line_is_converted() -> None:
    doc = parse_document(INPUTS_DOC)
    given = {
        "text": "hi",
        "count": "7",
        "ratio": "2",
        "flag": "true",
        "tags": '["a", "b"]',
        "extra": '{"k": 1}',
    }
    assert coerce_inputs(doc, given) == {
        "text": "hi",
        "count": 7,
        "ratio": 2,
        "flag": True,
        "tags": ["a", "b"],
        "extra": {"k": 1},
    }
    assert coerce_inputs(doc, {"text": "", "ratio": "-1.25", "flag": "No"})["ratio"] == -1.25
    assert coerce_inputs(doc, {"text": "x", "flag": "no"})["flag"] is False


def test_defaults_apply_and_are_copies() -> None:
    doc = parse_document(INPUTS_DOC)
    values = coerce_inputs(doc, {"text": "x"})
    assert values == {"text": "x", "count": 3, "ratio": 0.5, "flag": False, "tags": [], "extra": {}}
    values["tags"].append("changed")
    assert doc.inputs["tags"].default == []


def test_native_values_pass_through() -> None:
    doc = parse_document(INPUTS_DOC)
    values = coerce_inputs(doc, {"text": "x", "count": 4, "ratio": 1, "flag": True, "tags": ["z"]})
    assert (values["count"], values["ratio"], values["flag"], values["tags"]) == (4, 1, True, ["z"])
    assert coerce_inputs(doc, {"text": "x", "count": 5.0})["count"] == 5


def test_unknown_and_missing_inputs_are_named() -> None:
    doc = parse_document(INPUTS_DOC)
    with pytest.raises(
        ValidationError, match="unknown inputs colour, size; this workflow declares text, count"
    ) as info:
        coerce_inputs(doc, {"text": "x", "colour": "red", "size": "1"})
    assert info.value.field == "inputs.colour"
    with pytest.raises(ValidationError, match="missing required input text") as info:
        coerce_inputs(doc, {})
    assert info.value.field == "inputs.text"


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("count", "three", "inputs.count must be a whole number such as 3 (type integer); got 'three'"),
        ("count", "1.5", "whole number"),
        ("count", True, "whole number"),
        ("ratio", "nan", "a number such as 2.5"),
        ("flag", "maybe", "true or false"),
        ("tags", "a,b", 'a JSON list such as ["a", "b"]'),
        ("tags", '{"a": 1}', "JSON list"),
        ("extra", "[1]", "a JSON object"),
        ("text", 3, "must be text"),
        ("text", None, "inputs.text has no value"),
    ],
)
def test_bad_input_values_are_explained(name: str, value: Any, words: str) -> None:
    doc = parse_document(INPUTS_DOC)
    given = {"text": "x", name: value}
    with pytest.raises(ValidationError) as info:
        coerce_inputs(doc, given)
    assert words in info.value.message
    assert info.value.field == f"inputs.{name}"


def test_an_input_with_a_null_default_is_required() -> None:
    doc = parse_document("name: t\ninputs:\n  x: {type: string, default: null}\n" + with_step("")[8:])
    assert doc.inputs["x"].required


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------


def test_the_sample_has_no_broken_references() -> None:
    assert check_references(sample(), **KNOWN) == []


def test_target_and_key_names_compare_case_insensitively() -> None:
    known = {**KNOWN, "targets": {"LOCAL SANDBOX", "other TARGET"}, "account_keys": {"Other-Key"}}
    assert check_references(sample(), **known) == []


def test_unknown_activity_target_and_key() -> None:
    problems = check_references(
        sample(), activities={"send_email"}, targets={"Local sandbox"}, account_keys=set()
    )
    assert problems == [
        "steps[2].activity: unknown activity 'set_variables'; known activities: send_email",
        "steps[2].target: target 'Other target' does not exist; known targets: Local sandbox",
        "steps[2].account_key: account key 'other-key' does not exist; there are no account keys yet",
    ]


def expression_problems(steps: str, inputs: str = "") -> list[str]:
    text = "name: t\n" + (f"inputs:\n{inputs}" if inputs else "") + "steps:\n" + steps
    return check_references(parse_document(text), **KNOWN)


def test_steps_must_exist_and_come_before() -> None:
    problems = expression_problems(
        "  - id: first\n"
        "    activity: send_email\n"
        "    if: \"steps.second.status == 'succeeded'\"\n"
        "  - id: second\n"
        "    activity: send_email\n"
        '    with: {a: "{{ steps.first.output }}", b: "{{ steps.second.output }}", c: "{{ steps.nope.x }}"}\n'
    )
    assert problems == [
        "steps[0].if: steps.second has not run at this point; "
        "an expression can only read the steps before its own",
        "steps[1].with.b: steps.second has not run at this point; "
        "an expression can only read the steps before its own",
        "steps[1].with.c: there is no step 'nope' (steps: first, second)",
    ]


def test_inputs_must_be_declared() -> None:
    problems = expression_problems(
        '  - {id: a, activity: send_email, with: {to: ["{{ inputs.recipient }}", "{{ inputs.who }}"]}}\n',
        inputs="  recipient: {type: string}\n",
    )
    assert problems == ["steps[0].with.to[1]: inputs.who is not a declared input (declared: recipient)"]


def test_item_only_in_for_each_steps_and_unknown_names() -> None:
    problems = expression_problems(
        '  - {id: a, activity: send_email, with: {x: "{{ item }}", y: "{{ recipient }}"}}\n'
        '  - {id: b, activity: send_email, for_each: "{{ item }}", with: {x: "{{ item.name }}"}}\n'
        "  - {id: c, activity: send_email, for_each: [1, 2], if: item > 1}\n"
    )
    only = "item is only defined in the with, target and account_key of a step with for_each"
    assert problems == [
        f"steps[0].with.x: {only}",
        "steps[0].with.y: unknown name 'recipient'; expressions can read inputs, steps, item "
        "(in a step with for_each) and trigger (in a run started by an email trigger)",
        f"steps[1].for_each: {only}",
        f"steps[2].if: {only}",
    ]


def test_expression_syntax_errors_are_problems() -> None:
    problems = expression_problems(
        '  - {id: a, activity: send_email, if: "steps.x ==", with: {body: "Hi {{ name "}}\n'
    )
    assert len(problems) == 2
    assert problems[0].startswith("steps[0].if: `steps.x ==`: line 1: ")
    assert problems[1].startswith("steps[0].with.body: `Hi {{ name`: line 1: ")


def test_sandbox_refusals_are_problems() -> None:
    problems = expression_problems("  - {id: a, activity: send_email, with: {x: \"{% include 'x' %}\"}}\n")
    assert problems == [
        "steps[0].with.x: `{% include 'x' %}`: line 1: {% include %} is not available in workflow expressions"
    ]


def test_schedule_inputs_are_checked() -> None:
    text = SAMPLE.replace(
        "inputs: {recipient: a@example.org}", "inputs: {recipient: a@example.org, colour: red}"
    )
    problems = check_references(parse_document(text), **KNOWN)
    assert problems == [
        "schedules[0].inputs: unknown input colour; this workflow declares recipient, count",
    ]


def test_templated_target_names_are_checked_as_expressions() -> None:
    problems = expression_problems(
        '  - {id: a, activity: send_email, target: "{{ inputs.where }}", account_key: "{{ inputs.key }}"}\n',
        inputs="  where: {type: string}\n",
    )
    assert problems == ["steps[0].account_key: inputs.key is not a declared input (declared: where)"]


def test_references_list_targets_and_keys_as_written() -> None:
    assert references(sample()) == {
        "targets": {"Local sandbox", "Other target"},
        "account_keys": {"other-key"},
        "activities": {"send_email", "set_variables"},
    }
    templated = parse_document(with_step('    target: "{{ inputs.t }}"\n'))
    assert references(templated)["targets"] == set()
