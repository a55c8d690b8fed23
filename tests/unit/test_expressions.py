"""Workflow expressions: native values, text, conditions, errors, the sandbox and its limits."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwright.domain.addresses import RenderedText
from mailwright.domain.expressions import (
    MAX_OUTPUT_CHARS,
    MAX_RANGE_ITEMS,
    check_syntax,
    evaluate,
    evaluate_condition,
    is_template,
    referenced_names,
    render_value,
    single_expression,
)
from mailwright.errors import ValidationError

ENV_SECRET = "env-secret-7f3a9c"


def context() -> dict[str, Any]:
    return {
        "inputs": {"recipient": "ops@example.org", "count": 3, "tags": ["a", "b"], "flag": False},
        "steps": {
            "alert": {
                "status": "succeeded",
                "output": {"message_id": "<1@example.org>", "items": ["x", "y"]},
                "error": None,
            }
        },
    }


# --------------------------------------------------------------------------------------
# Native values and text
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ inputs.count }}", 3),
        ("{{ inputs.count + 1 }}", 4),
        ("{{ ['a', 'b'] }}", ["a", "b"]),
        ("{{ inputs.tags }}", ["a", "b"]),
        ("{{ {'k': inputs.count} }}", {"k": 3}),
        ("{{ (1, 2) }}", [1, 2]),
        ("{{ none }}", None),
        ("{{ inputs.flag }}", False),
        ("  {{ inputs.recipient }}\n", "ops@example.org"),
        ("{{- inputs.count -}}", 3),
        ("{{ '}}' }}", "}}"),
        ("{{ inputs.tags|map('upper')|list }}", ["A", "B"]),
        ("{{ range(3) }}", [0, 1, 2]),
        ("{{ inputs.recipient.split('@')[1] }}", "example.org"),
        ("{{ steps.alert.output.items }}", ["x", "y"]),  # a key wins over dict.items
    ],
)
def test_one_expression_gives_its_native_value(text: str, expected: Any) -> None:
    assert render_value(text, context()) == expected


def test_markup_results_come_back_as_plain_text() -> None:
    value = render_value("{{ '<b>'|e }}", context())
    assert value == "&lt;b&gt;"
    # Plain text, not Markup (which would escape what is added to it); text that could be
    # split into addresses is marked as an expression's (domain/addresses.py).
    assert type(value) in (str, RenderedText)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Alert {{ inputs.count }}", "Alert 3"),
        ("{{ inputs.count }} of {{ inputs.tags|length }}", "3 of 2"),
        ("{% for t in inputs.tags %}{{ loop.index }}={{ t }};{% endfor %}", "1=a;2=b;"),
        ("{% if inputs.flag %}yes{% else %}no{% endif %}", "no"),
        ("{% set n = inputs.count * 2 %}n={{ n }}", "n=6"),
        ("Re: {{ 'x' ~ inputs.count }}", "Re: x3"),
        ("line\n{{ inputs.count }}\n", "line\n3\n"),  # the trailing newline is kept
        ("{{ {'b': 1, 'a': '<x>'}|tojson }}!", '{"a": "<x>", "b": 1}!'),
        ("{% set x %}[{{ inputs.count }}]{% endset %}{{ x }}{{ x }}", "[3][3]"),
    ],
)
def test_text_with_expressions_renders_to_a_string(text: str, expected: str) -> None:
    assert render_value(text, context()) == expected


@pytest.mark.parametrize("text", ["plain text", "a { brace } or two", "100% sure", ""])
def test_text_without_markup_is_returned_as_it_is(text: str) -> None:
    assert not is_template(text)
    assert render_value(text, context()) is text


def test_render_value_walks_dicts_and_lists_and_keeps_other_values() -> None:
    value = {
        "to": ["{{ inputs.recipient }}", "b@example.org"],
        "subject": "Alert {{ inputs.count }}",
        "count": 7,
        "nested": {"flag": "{{ not inputs.flag }}", "none": None},
    }
    assert render_value(value, context()) == {
        "to": ["ops@example.org", "b@example.org"],
        "subject": "Alert 3",
        "count": 7,
        "nested": {"flag": True, "none": None},
    }


def test_single_expression_detection() -> None:
    assert single_expression("{{ a }}") == " a "
    assert single_expression("  {{ a.b }}  ") == " a.b "
    assert single_expression("{{ a }} {{ b }}") is None
    assert single_expression("x {{ a }}") is None
    assert single_expression("{{ a }}{% if b %}{% endif %}") is None
    assert single_expression("a") is None


# --------------------------------------------------------------------------------------
# Conditions and evaluate
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ steps.alert.status == 'succeeded' }}", True),
        ("steps.alert.status == 'succeeded'", True),
        ("steps.alert.status == 'failed'", False),
        ("{{ inputs.flag }}", False),
        ("inputs.tags", True),
        ("inputs.tags | length > 5", False),
        ("'ops' in inputs.recipient", True),
    ],
)
def test_conditions(text: str, expected: bool) -> None:
    assert evaluate_condition(text, context()) is expected


@pytest.mark.parametrize("text", ["{{ a }} and {{ b }}", "x {{ inputs.flag }}", "   "])
def test_a_condition_must_be_one_expression(text: str) -> None:
    with pytest.raises(ValidationError, match="expression"):
        evaluate_condition(text, context(), field="steps[1].if")


def test_evaluate_gives_native_values_for_for_each() -> None:
    assert evaluate("{{ ['a', 'b'] }}", context()) == ["a", "b"]
    assert evaluate("inputs.tags + ['c']", context()) == ["a", "b", "c"]


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_undefined_attribute_names_the_expression_and_the_problem() -> None:
    with pytest.raises(ValidationError) as info:
        render_value("{{ steps.alert.output.nope }}", context())
    assert info.value.message == "`{{ steps.alert.output.nope }}`: 'dict object' has no attribute 'nope'"
    assert info.value.hint


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{{ nope }}", "'nope' is undefined"),
        ("Hello {{ inputs.name }}!", "has no attribute 'name'"),
        ("{{ [inputs.missing] }}", "has no attribute 'missing'"),
        ("{{ steps.later.output }}", "has no attribute 'later'"),
        ("{% for x in nothing %}{% endfor %}", "'nothing' is undefined"),
        ("{{ inputs.count ~ nope }}", "'nope' is undefined"),
    ],
)
def test_undefined_names_are_errors_not_empty_text(text: str, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        render_value(text, context())


def test_undefined_in_a_condition_is_an_error() -> None:
    with pytest.raises(ValidationError, match="'dict object' has no attribute 'missing'"):
        evaluate_condition("inputs.missing", context())


def test_errors_name_the_field_inside_the_value() -> None:
    with pytest.raises(ValidationError) as info:
        render_value({"to": ["ok", "{{ nope }}"]}, context(), field="steps[0].with")
    assert info.value.field == "steps[0].with.to[1]"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{{ inputs.count + 'x' }}", "TypeError"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ inputs.count() }}", "not callable"),
    ],
)
def test_runtime_errors_become_validation_errors(text: str, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        render_value(text, context())


def test_runtime_errors_in_long_templates_give_the_line() -> None:
    with pytest.raises(ValidationError, match=r"\(line 3\)") as info:
        render_value("first\nsecond\nthird {{ nope }}\n", context())
    assert "third {{ nope }}" in info.value.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("{{ inputs.count ", 1),
        ("{% for x in y %}", 1),
        ("a\nb\n{{ 1 + }}", 3),
        ("{{ x|no_such_filter }}", 1),
    ],
)
def test_check_syntax_reports_the_problem_and_the_line(text: str, line: int) -> None:
    with pytest.raises(ValidationError, match=f"line {line}: ") as info:
        check_syntax(text, field="steps[0].with.body")
    assert info.value.field == "steps[0].with.body"


def test_check_syntax_of_expressions() -> None:
    check_syntax("steps.alert.status == 'succeeded'", expression=True)
    check_syntax("{{ inputs.tags }}", expression=True)
    check_syntax("plain text, no markup")
    with pytest.raises(ValidationError, match="line 1"):
        check_syntax("steps.alert status", expression=True)
    with pytest.raises(ValidationError, match="one expression"):
        check_syntax("{{ a }} {{ b }}", expression=True)


def test_syntax_errors_at_render_time_too() -> None:
    with pytest.raises(ValidationError, match="line 1"):
        render_value("Hello {{ name ", context())


# --------------------------------------------------------------------------------------
# referenced_names
# --------------------------------------------------------------------------------------


def test_referenced_names_are_roots_with_their_first_attribute() -> None:
    text = "{{ inputs.recipient }} {{ steps.alert.output.message_id }} {{ inputs['count'] }}"
    assert referenced_names(text) == {"inputs.recipient", "steps.alert", "inputs.count"}


def test_referenced_names_leave_out_locals_globals_and_plain_text() -> None:
    text = (
        "{% for t in inputs.tags %}{{ t.upper() }}{{ loop.index }}{% endfor %}"
        "{% set n = 1 %}{{ n }}{{ range(2) }}"
    )
    assert referenced_names(text) == {"inputs.tags"}
    assert referenced_names("no markup here") == set()
    assert referenced_names("{{ item }} {{ steps[name] }}") == {"item", "steps", "name"}


def test_referenced_names_of_a_bare_expression() -> None:
    assert referenced_names("steps.alert.status == 'ok'", expression=True) == {"steps.alert"}
    with pytest.raises(ValidationError, match="line 1"):
        referenced_names("{{ steps. }}")


# --------------------------------------------------------------------------------------
# The sandbox: classic template-injection payloads must fail, not return data
# --------------------------------------------------------------------------------------

SSTI_PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ [].__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__.os.environ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__.__builtins__ }}",
    "{{ config.__class__.__init__.__globals__['os'].environ }}",
    "{{ request.application.__globals__.__builtins__.open('/etc/passwd').read() }}",
    "{{ range.__globals__['os'].environ }}",
    "{{ dict.__base__.__subclasses__() }}",
    "{{ dict.mro() }}",
    "{{ inputs.__class__.__init__.__globals__ }}",
    "{{ inputs.get.__self__ }}",
    "{{ ()|attr('__class__')|attr('__base__')|attr('__subclasses__')() }}",
    "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ inputs.tags|map(attribute='__class__')|list }}",
    "{{ inputs.tags|selectattr('__class__')|list }}",
    "{{ '{0.__class__.__init__.__globals__}'.format(inputs) }}",
    "{{ '{0}'.format_map(inputs) }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}{{ os.environ }}",
    "{% extends '/etc/passwd' %}",
    "{% from 'os' import environ %}{{ environ }}",
    "{% macro m() %}{% endmacro %}{{ m.__globals__ }}",
    "{% set ns = namespace() %}{{ ns }}",
    "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
    "{{ lipsum() }}",
    "{{ 'x'|pprint }}",
    "{{ inputs.recipient.encode() }}",
]


@pytest.mark.parametrize("payload", SSTI_PAYLOADS)
def test_template_injection_payloads_are_refused(payload: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILWRIGHT_SSTI_CANARY", ENV_SECRET)
    for text in (payload, f"prefix {payload} suffix"):
        with pytest.raises(ValidationError) as info:
            render_value(text, context())
        message = str(info.value)
        assert ENV_SECRET not in message
        assert "root:" not in message  # no line of /etc/passwd
        assert "<class" not in message  # no Python object leaked into the message


def test_files_and_environment_are_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILWRIGHT_SSTI_CANARY", ENV_SECRET)
    attempts = [
        "{{ open('/etc/passwd').read() }}",
        "{{ os.environ['MAILWRIGHT_SSTI_CANARY'] }}",
        "{{ environ }}",
        "{{ __builtins__ }}",
        "{{ import('os') }}",
        "{{ environment }}",
        "{{ context }}",
    ]
    for text in attempts:
        with pytest.raises(ValidationError) as info:
            render_value(text, context())
        assert ENV_SECRET not in str(info.value)


def test_mutating_methods_are_refused() -> None:
    ctx = context()
    with pytest.raises(ValidationError, match="unsafe"):
        render_value("{{ inputs.tags.append('x') }}", ctx)
    with pytest.raises(ValidationError, match="unsafe"):
        render_value("{{ inputs.update({'count': 1}) }}", ctx)
    assert ctx["inputs"]["tags"] == ["a", "b"]


# --------------------------------------------------------------------------------------
# Limits: a document cannot exhaust memory
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "{{ 'a' * 10**9 }}",
        "{{ ['a'] * 10**8 }}",
        "{{ 2 ** 10000000 }}",
        "{{ (10 ** 5000) * (10 ** 5000) * (10 ** 5000) * (10 ** 5000) * (10 ** 5000) }}",
        "{{ range(10**9)|list }}",
        f"{{{{ range({MAX_RANGE_ITEMS + 1})|list }}}}",
        "{{ range(10**30) }}",
        "{{ 'x'|center(10**8) }}",
        "{{ 'x'|indent(10**8, true) }}",
        "{{ 'ab'|replace('', 'x' * 600000) }}",
        "{{ ('a' * 1000)|wordwrap(1, wrapstring='y' * 10000) }}",
        "{{ '%0999999999d'|format(1) }}",
        "{{ '%0999999999d' % 1 }}",
        "{{ '%*d' % (10**8, 1) }}",
        "{{ [1]|batch(10**9, 0)|list }}",
        "{{ [1]|slice(10**9)|list }}",
        "{{ range(10)|join('x' * 200000) }}",
        "{{ {'a': [1, [2, [3]]]}|tojson(indent=10**6) }}",
        "{% set s = 'x' * 600000 %}{{ s ~ s }}",
        "{% set s = 'x' * 600000 %}{{ s + s }}",
        "{% set a = ['x' * 1000] * 999 %}{% set b = [a, a] %}{{ b|length }}",
        "{% set a = [1] * 999999 %}{% set b = [a, a] %}{{ b|length }}",
        "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}",
        "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}",
        "{% set x %}{% for i in range(10000) %}{{ 'y' * 999 }}{% endfor %}{% endset %}{{ x|length }}",
    ],
)
def test_work_is_bounded(text: str) -> None:
    with pytest.raises(ValidationError, match=r"limit|more than|too large|not supported"):
        render_value(text, context())


def test_limits_leave_room_for_ordinary_work() -> None:
    assert render_value("{{ range(10000)|list|length }}", context()) == MAX_RANGE_ITEMS
    assert len(render_value("{{ 'x' * 999999 }}", context())) == 999_999
    table = "{% for i in range(200) %}{% for j in range(5) %}{{ i * j }},{% endfor %}{% endfor %}"
    assert render_value(table, context()).count(",") == 1000
    assert render_value("{{ 'x'|center(9) }}", context()) == "    x    "


def test_rendered_text_is_capped() -> None:
    text = "{% for i in range(2000) %}" + "z" * 1000 + "{% endfor %}"
    with pytest.raises(ValidationError, match=f"{MAX_OUTPUT_CHARS:,}"):
        render_value(text, context())


def test_large_context_values_pass_through_by_reference() -> None:
    big = "b" * 5_000_000
    ctx = {**context(), "inputs": {"big": big, "many": [big]}}
    assert render_value("{{ inputs.big }}", ctx) is big
    assert render_value("{{ inputs.big|length }}", ctx) == 5_000_000
    assert render_value("{% for b in inputs.many %}{{ b|length }}{% endfor %}", ctx) == "5000000"
    with pytest.raises(ValidationError, match="limit"):
        render_value("{{ inputs.big ~ '!' }}", ctx)  # a new 5 MB value
    with pytest.raises(ValidationError, match="limit"):
        render_value("{{ inputs.many * 100 }}", ctx)  # 500 MB once written out
    with pytest.raises(ValidationError, match="limit"):
        render_value("text {{ inputs.big }}", ctx)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

_PIECES = [
    "{{", "}}", "{%", "%}", "{#", "#}", " ", "x", "inputs", "steps", ".", "count", "tags", "'", '"',
    "(", ")", "[", "]", "*", "**", "~", "+", "%", "|", "list", "join", "length", "9", "10", "range",
    "for", "in", "endfor", "if", "endif", "set", "=", "__class__", "attr", "format", ",", "-", "\n",
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=120))
def test_render_value_on_arbitrary_text_raises_only_validation_errors(text: str) -> None:
    with contextlib.suppress(ValidationError):
        render_value(text, context())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_PIECES), max_size=30).map("".join))
def test_render_value_on_template_like_text_raises_only_validation_errors(text: str) -> None:
    with contextlib.suppress(ValidationError):
        render_value(text, context())
    with contextlib.suppress(ValidationError):
        evaluate_condition(text, context())
