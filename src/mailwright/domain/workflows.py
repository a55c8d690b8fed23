"""Workflow documents: their model, YAML/JSON reading and writing, inputs and reference checks.

A workflow is a portable document (YAML or JSON)::

    name: Alert and follow up
    inputs:
      recipient: {type: string, default: ops@example.org}
    target: Local sandbox            # optional, by display name
    schedules:
      - {cron: "0 7 * * 1-5", inputs: {recipient: a@example.org}}
    steps:
      - id: alert
        activity: send_email
        with: {to: ["{{ inputs.recipient }}"], subject: Alert}
      - id: followup
        activity: send_email
        if: "{{ steps.alert.status == 'succeeded' }}"
        with: {in_reply_to: "{{ steps.alert.output.message_id }}"}

Expressions may read the names in `CONTEXT_NAMES`: ``inputs`` (the coerced inputs),
``steps`` (the steps that ran before, by id: status, output, error) and ``item`` (the
current item, in the ``with``, ``target`` and ``account_key`` of a step with ``for_each``;
its ``if`` and ``for_each`` are evaluated once, before the items) and ``trigger`` (in a run
started by an email trigger: ``trigger.message`` holds the Read Email fields of the mail,
``trigger.target`` and ``trigger.folder`` where it came from). Targets and account keys
are display names; one holding ``{{ }}`` is resolved at run time and checked as an expression.

Pure: no I/O. YAML is read with YAML 1.2 scalars (``yes``/``no``/``on`` and dates stay
text), without aliases, tags or duplicate keys, so every document is plain JSON data.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from enum import StrEnum
from pathlib import PurePath
from typing import Any, ClassVar, Final, Literal, get_args, get_origin

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mailwright.domain.expressions import check_syntax, is_template, referenced_names, single_expression
from mailwright.domain.triggers import EmailTrigger
from mailwright.errors import ValidationError

__all__ = [
    "CONTEXT_NAMES",
    "MAX_DOCUMENT_CHARS",
    "DocumentFormat",
    "InputSpec",
    "InputType",
    "Schedule",
    "Step",
    "WorkflowDocument",
    "check_references",
    "coerce_inputs",
    "convert_source",
    "dump_document",
    "parse_document",
    "references",
    "source_format",
    "validate_cron",
]

MAX_DOCUMENT_CHARS: Final = 1_000_000
CONTEXT_NAMES: Final = ("inputs", "steps", "item", "trigger")

DocumentFormat = Literal["yaml", "json"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INTEGER_TEXT = re.compile(r"^[+-]?[0-9]{1,100}$")
_TRUE_WORDS: Final = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS: Final = frozenset({"false", "no", "off", "0"})


def _identifier_problem(kind: str, name: str) -> str | None:
    if _IDENTIFIER.fullmatch(name):
        return None
    suggestion = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not suggestion or suggestion[0].isdigit():
        suggestion = "_" + suggestion
    return (
        f"{kind} '{name}' is not an identifier: use letters, digits and underscores, not starting "
        f"with a digit (e.g. '{suggestion}'), so expressions can name it"
    )


# --------------------------------------------------------------------------------------
# Cron
# --------------------------------------------------------------------------------------

_MONTH_NAMES: Final = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTHS: Final = {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}
_DAYS: Final = {name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_CRON_FIELDS: Final[tuple[tuple[str, int, int, dict[str, int]], ...]] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_CRON_EXAMPLE: Final = "'0 7 * * 1-5' is 07:00 on weekdays"


def _cron_number(text: str, field: str, low: int, high: int, names: dict[str, int]) -> int:
    if text.upper() in names:
        return names[text.upper()]
    if not text.isdigit() or len(text) > 4:
        allowed = f"{low}-{high}" + (f" or {'/'.join(names)}" if names else "")
        raise ValueError(f"the {field} field has '{text}', which is not a number ({allowed})")
    number = int(text)
    if not low <= number <= high:
        raise ValueError(f"the {field} field has {number}, outside {low}-{high}")
    return number


def _check_cron_part(part: str, field: str, low: int, high: int, names: dict[str, int]) -> None:
    base, slash, step = part.partition("/")
    if slash and (not step.isdigit() or not 1 <= int(step) <= high):
        raise ValueError(f"the {field} field has step '/{step}'; a step is a number from 1 to {high}")
    if base == "*":
        return
    start_text, dash, end_text = base.partition("-")
    start = _cron_number(start_text, field, low, high, names)
    if dash:
        end = _cron_number(end_text, field, low, high, names)
        if start > end:
            raise ValueError(f"the {field} field has the range {base}, which runs backwards")


def validate_cron(expression: str) -> str:
    """The five-field cron expression with its spacing normalised; ValueError says what is wrong.

    Fields: minute hour day-of-month month day-of-week, each ``*``, a number, a range
    ``a-b``, a step ``*/n`` or ``a-b/n``, or a comma list of those; months and days may be
    named (JAN, MON). Nicknames such as ``@daily`` are not accepted.
    """
    fields = expression.split()
    if len(fields) != 5:
        got = f"{len(fields)} field{'s' if len(fields) != 1 else ''}"
        raise ValueError(
            f"cron '{expression}' has {got}; it needs 5: minute hour day-of-month month day-of-week "
            f"({_CRON_EXAMPLE}; write '0 0 * * *' rather than @daily)"
        )
    for text, (field, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            if not part:
                raise ValueError(f"cron '{expression}': the {field} field has an empty item in '{text}'")
            try:
                _check_cron_part(part, field, low, high, names)
            except ValueError as exc:
                raise ValueError(f"cron '{expression}': {exc} ({_CRON_EXAMPLE})") from None
    return " ".join(fields)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


class InputType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    LIST = "list"
    OBJECT = "object"


def _matches_type(kind: InputType, value: Any) -> bool:
    if kind is InputType.STRING:
        return isinstance(value, str)
    if kind is InputType.INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is InputType.NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind is InputType.BOOLEAN:
        return isinstance(value, bool)
    if kind is InputType.LIST:
        return isinstance(value, list)
    return isinstance(value, dict)


class InputSpec(BaseModel):
    """One declared input. It is required when it has no default (absent or null).

    An optional input without a meaningful default takes an empty one: ``""``, ``[]``, ``{}``.
    """

    model_config = ConfigDict(extra="forbid")

    type: InputType = InputType.STRING
    default: Any = None
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is None

    @field_validator("description", mode="before")
    @classmethod
    def _no_description(cls, value: Any) -> Any:
        return "" if value is None else value

    @model_validator(mode="after")
    def _default_matches_type(self) -> InputSpec:
        if self.default is not None and not _matches_type(self.type, self.default):
            raise ValueError(f"the default {self.default!r} is not of type {self.type.value}")
        return self


class Schedule(BaseModel):
    """Start the workflow on a cron schedule (UTC unless the scheduler says otherwise)."""

    model_config = ConfigDict(extra="forbid")

    cron: str
    enabled: bool = True
    inputs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return validate_cron(value)

    @field_validator("inputs", mode="before")
    @classmethod
    def _no_inputs(cls, value: Any) -> Any:
        return {} if value is None else value


class Step(BaseModel):
    """One activity in a workflow. ``with``/``if`` are the document's keys (`with_`/`if_` here)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(max_length=100)
    activity: str = Field(min_length=1, max_length=100)
    if_: str | None = Field(default=None, alias="if")
    for_each: str | list[Any] | None = None
    max_items: int = Field(default=500, ge=1, le=10_000)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    target: str | None = Field(default=None, min_length=1, max_length=200)
    account_key: str | None = Field(default=None, min_length=1, max_length=200)
    continue_on_failure: bool = False
    skip_execution: bool = False
    timeout: float = Field(default=180, gt=0, le=86_400)  # seconds per attempt
    retries: int = Field(default=3, ge=0, le=20)  # retries of transient failures
    # `with` used exactly as written: no {{ }} expressions (a one-off Send Email's text).
    literal: bool = False

    @field_validator("id")
    @classmethod
    def _id_is_identifier(cls, value: str) -> str:
        problem = _identifier_problem("step id", value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("if_", mode="before")
    @classmethod
    def _if_is_text(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError(
                f"'if' must be an expression in quotes, e.g. \"{{{{ steps.alert.status == 'succeeded' }}}}\""
                f" (got {value!r})"
            )
        return value

    @field_validator("for_each", mode="before")
    @classmethod
    def _for_each_shape(cls, value: Any) -> Any:
        if value is None or isinstance(value, list):
            return value
        if isinstance(value, str) and single_expression(value) is not None:
            return value
        raise ValueError(
            "'for_each' must be a list, or one {{ }} expression giving a list, "
            f'e.g. "{{{{ inputs.recipients }}}}" (got {value!r})'
        )

    @field_validator("with_", mode="before")
    @classmethod
    def _no_with(cls, value: Any) -> Any:
        return {} if value is None else value


class WorkflowDocument(BaseModel):
    """A whole workflow as written in its YAML or JSON document."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    target: str | None = Field(default=None, min_length=1, max_length=200)
    account_key: str | None = Field(default=None, min_length=1, max_length=200)
    schedules: list[Schedule] = Field(default_factory=list)
    triggers: list[EmailTrigger] = Field(default_factory=list)
    steps: list[Step]

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the name is blank; give the workflow a name")
        return value

    @field_validator("description", mode="before")
    @classmethod
    def _no_description(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("inputs", "schedules", "triggers", mode="before")
    @classmethod
    def _empty_when_null(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        if value is None:
            return {} if info.field_name == "inputs" else []
        return value

    @field_validator("inputs")
    @classmethod
    def _input_names(cls, value: dict[str, InputSpec]) -> dict[str, InputSpec]:
        for name in value:
            problem = _identifier_problem("input name", name)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[Step]) -> list[Step]:
        if not value:
            raise ValueError("a workflow needs at least one step")
        first_seen: dict[str, int] = {}
        for index, step in enumerate(value):
            if step.id in first_seen:
                raise ValueError(
                    f"step id '{step.id}' is used by steps[{first_seen[step.id]}] and steps[{index}]; "
                    "give each step its own id"
                )
            first_seen[step.id] = index
        return value


# --------------------------------------------------------------------------------------
# Reading: YAML 1.2 scalars, no aliases, no tags, no duplicate keys
# --------------------------------------------------------------------------------------

_STR_TAG: Final = "tag:yaml.org,2002:str"
_YAML12_RESOLVERS: Final = (
    ("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")),
    (
        "tag:yaml.org,2002:int",
        re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
        list("-+0123456789"),
    ),
    (
        "tag:yaml.org,2002:float",
        re.compile(
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        list("-+.0123456789"),
    ),
)


class _Loader(yaml.SafeLoader):
    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012  (filled below: YAML 1.2 core scalars)
    yaml_constructors: ClassVar[dict[str | None, Any]] = {
        "tag:yaml.org,2002:null": yaml.SafeLoader.construct_yaml_null,
        "tag:yaml.org,2002:bool": yaml.SafeLoader.construct_yaml_bool,
        "tag:yaml.org,2002:float": yaml.SafeLoader.construct_yaml_float,
        _STR_TAG: yaml.SafeLoader.construct_yaml_str,
        "tag:yaml.org,2002:seq": yaml.SafeLoader.construct_yaml_seq,
        "tag:yaml.org,2002:map": yaml.SafeLoader.construct_yaml_map,
        None: yaml.SafeLoader.construct_undefined,  # any other tag (!!binary, !!set, !custom) is refused
    }
    yaml_multi_constructors: ClassVar[dict[str | None, Any]] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None,
                None,
                "aliases (*name) are not supported in workflow documents; repeat the value instead",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "mapping keys must be text; put the key in quotes",
                    key_node.start_mark,
                )
            key = str(key_node.value)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key '{key}' (first on line {first_line[key]}); keep only one",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


for _tag, _pattern, _first in _YAML12_RESOLVERS:
    _Loader.add_implicit_resolver(_tag, _pattern, _first)
_Loader.yaml_constructors["tag:yaml.org,2002:int"] = _construct_int


class _Dumper(yaml.SafeDumper):
    """Quotes any text that YAML 1.1 or 1.2 would read as something else; no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = None
    if any(char in data for char in "\r\x85\u2028\u2029"):
        style = '"'  # PyYAML folds these breaks wrongly in other styles; escaped, they survive
    elif "\n" in data:
        style = "|"  # bodies read as written; PyYAML falls back to quotes when it must
    return dumper.represent_scalar(_STR_TAG, data, style=style)


for _tag, _pattern, _first in _YAML12_RESOLVERS:
    _Dumper.add_implicit_resolver(_tag, _pattern, _first)
_Dumper.add_representer(str, _represent_str)

_YAML_HINT: Final = (
    "YAML is indentation-sensitive: check the indentation of that line and the one before it, and "
    "put values in quotes when they contain ': ' or start with '{', '[', '*', '&', '!' or '%'"
)


def _yaml_error(exc: yaml.YAMLError) -> ValidationError:
    if isinstance(exc, yaml.MarkedYAMLError) and (exc.problem_mark or exc.context_mark):
        mark = exc.problem_mark or exc.context_mark
        assert mark is not None
        text = f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem or exc.context}"
        if exc.problem and exc.context and exc.context_mark is not None:
            text += f" ({exc.context} on line {exc.context_mark.line + 1})"
        return ValidationError(text, hint=_YAML_HINT)
    return ValidationError(f"the document is not valid YAML: {exc}", hint=_YAML_HINT)


def _load_yaml(text: str) -> tuple[Any, Callable[[tuple[str | int, ...]], int | None]]:
    try:
        loader = _Loader(text)  # refuses control characters YAML does not allow, at once
    except yaml.YAMLError as exc:
        raise _yaml_error(exc) from None
    try:
        root = loader.get_single_node()
        if root is None:
            raise ValidationError(
                "the document is empty", hint="a workflow needs at least a name and one step"
            )
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc) from None
    except ValueError as exc:  # an integer too long to read
        raise ValidationError(f"the document has a value that cannot be read: {exc}") from None
    except RecursionError:
        raise ValidationError("the document is nested too deeply") from None
    finally:
        loader.dispose()

    def locate(loc: tuple[str | int, ...]) -> int | None:
        return _yaml_line(root, loc)

    return data, locate


def _yaml_line(root: yaml.Node, loc: tuple[str | int, ...]) -> int | None:
    node = root
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    line, node = key_node.start_mark.line + 1, value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key '{key}'; keep only one")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value; write a number or a string")


def _load_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_json_object, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"line {exc.lineno}, column {exc.colno}: {exc.msg}",
            hint="the document is read as JSON; check the commas, quotes and brackets around that place",
        ) from None
    except ValueError as exc:
        raise ValidationError(f"the JSON document is not usable: {exc}") from None
    except RecursionError:
        raise ValidationError("the document is nested too deeply") from None


def _detect_format(text: str, filename: str | None) -> tuple[DocumentFormat, bool]:
    """The format, and whether it was chosen by the file name (else by the content)."""
    suffix = PurePath(filename).suffix.lower() if filename else ""
    if suffix == ".json":
        return "json", True
    if suffix in (".yaml", ".yml"):
        return "yaml", True
    return ("json" if text.lstrip()[:1] in ("{", "[") else "yaml"), False


# --------------------------------------------------------------------------------------
# Pydantic errors in words, with where they are
# --------------------------------------------------------------------------------------


def _format_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _data_loc(loc: tuple[str | int, ...], data: Any, kind: str) -> tuple[str | int, ...]:
    """The part of Pydantic's location that exists in the data (drops union member tags)."""
    current = data
    out: list[str | int] = []
    for position, part in enumerate(loc):
        in_dict = isinstance(current, dict) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_dict or in_list:
            current = current[part]
        else:
            if kind == "missing" and position == len(loc) - 1:
                out.append(part)
            break
        out.append(part)
    return tuple(out)


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    annotation: Any = WorkflowDocument
    for part in loc:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = annotation.model_fields
            found = next((f for n, f in fields.items() if (f.alias or n) == part), None)
            if found is None:
                return None
            annotation = found.annotation
        elif get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _allowed_keys(loc: tuple[str | int, ...]) -> list[str]:
    model = _model_at(loc)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _describe(
    error: pydantic.ValidationError,
    data: Any,
    locate: Callable[[tuple[str | int, ...]], int | None] | None,
) -> ValidationError:
    problems = error.errors()
    first = problems[0]
    kind = first["type"]
    loc = _data_loc(tuple(first["loc"]), data, kind)
    path = _format_path(loc)
    hint = None
    if kind == "extra_forbidden":
        parent, key = loc[:-1], str(loc[-1])
        allowed = _allowed_keys(parent)
        text = f"{_format_path(parent) or 'the document'}: unknown key '{key}'"
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            text += f"; did you mean '{close[0]}'?"
        if allowed:
            text += f" Allowed keys: {', '.join(allowed)}"
    elif kind == "missing":
        text = f"{_format_path(loc[:-1]) or 'the document'}: '{loc[-1]}' is required"
        allowed = _allowed_keys(loc[:-1])
        if loc[-1] == "steps":
            hint = "add a steps list with at least one step (id and activity)"
        elif allowed:
            hint = f"the keys here are: {', '.join(allowed)}"
    else:
        message = first["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        message = message[:1].lower() + message[1:]
        shown = first.get("input")
        got = ""
        if kind != "value_error" and isinstance(shown, str | int | float) and len(repr(shown)) < 80:
            got = f" (got {shown!r})"
        text = f"{path}: {message}{got}" if path else f"{message}{got}"
    line = locate(loc) if locate is not None else None
    if line is not None:
        text = f"line {line}: {text}"
    more = len(problems) - 1
    if more:
        text += f"; and {more} more problem{'s' if more > 1 else ''}"
    return ValidationError(text, field=path or None, hint=hint)


# --------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------


def parse_document(text: str, *, filename: str | None = None) -> WorkflowDocument:
    """The workflow in `text` (YAML or JSON, by the file name's extension, else by content).

    Every problem, whether the syntax or the shape, becomes one ValidationError naming
    where it is: ``line 12: steps[1].with: …`` (YAML gives lines; JSON gives the path).
    """
    label = f"{filename}: " if filename else ""
    try:
        return _parse(text, filename)
    except ValidationError as exc:
        if not label:
            raise
        raise ValidationError(label + exc.message, field=exc.field, hint=exc.hint) from None


def _parse(text: str, filename: str | None) -> WorkflowDocument:
    if len(text) > MAX_DOCUMENT_CHARS:
        raise ValidationError(
            f"the document is {len(text):,} characters; the limit is {MAX_DOCUMENT_CHARS:,}",
            hint="split the workflow, or move large text into inputs",
        )
    fmt, by_name = _detect_format(text, filename)
    locate: Callable[[tuple[str | int, ...]], int | None] | None = None
    if fmt == "json":
        try:
            data = _load_json(text)
        except ValidationError:
            if by_name:
                raise
            try:  # it looked like JSON, but YAML flow style starts with '{' too
                data, locate = _load_yaml(text)
            except ValidationError:
                pass
            else:
                return _validate(data, locate)
            raise
    else:
        data, locate = _load_yaml(text)
    return _validate(data, locate)


def _validate(data: Any, locate: Callable[[tuple[str | int, ...]], int | None] | None) -> WorkflowDocument:
    if not isinstance(data, dict):
        kind = "list" if isinstance(data, list) else "single value"
        raise ValidationError(
            f"a workflow document must be a mapping with at least name and steps; this one is a {kind}",
            hint="start the document with 'name:' and 'steps:'",
        )
    try:
        return WorkflowDocument.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _describe(exc, data, locate) from None


def dump_document(doc: WorkflowDocument, fmt: DocumentFormat = "yaml") -> str:
    """The document as YAML or JSON text, with the keys as written (``with``, ``if``).

    Keys that were not given are left out, so ``parse_document(dump_document(doc)) == doc``.
    """
    return _dump_data(doc.model_dump(mode="json", by_alias=True, exclude_unset=True), fmt)


def _dump_data(data: Any, fmt: DocumentFormat) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )


def source_format(text: str) -> DocumentFormat:
    """The format a document's source text is in: JSON when it reads as JSON, else YAML."""
    fmt, _ = _detect_format(text, None)
    if fmt == "yaml":
        return fmt
    try:
        _load_json(text)
    except ValidationError:
        return "yaml"  # YAML flow style, which starts with '{' too
    return fmt


def convert_source(text: str, fmt: DocumentFormat) -> str:
    """A valid document's source in `fmt`: as it is when already in `fmt`, else rewritten.

    A rewrite keeps the keys in the order they were written (not the model's order);
    only YAML comments, which JSON cannot hold, are lost.
    """
    current = source_format(text)
    if current == fmt:
        return text
    data = _load_json(text) if current == "json" else _load_yaml(text)[0]
    return _dump_data(data, fmt)


def _coerce(name: str, spec: InputSpec, value: Any) -> Any:
    field = f"inputs.{name}"
    kind = spec.type
    if value is None:
        raise ValidationError(
            f"{field} has no value (got null)", field=field, hint="leave the input out to use its default"
        )
    if _matches_type(kind, value):
        return value
    if isinstance(value, str):
        text = value.strip()
        if kind is InputType.STRING:
            return value
        if kind is InputType.INTEGER and _INTEGER_TEXT.fullmatch(text):
            return int(text)
        if kind is InputType.NUMBER:
            if _INTEGER_TEXT.fullmatch(text):
                return int(text)
            try:
                number = float(text)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
        if kind is InputType.BOOLEAN and text.lower() in _TRUE_WORDS | _FALSE_WORDS:
            return text.lower() in _TRUE_WORDS
        if kind in (InputType.LIST, InputType.OBJECT):
            try:
                parsed = json.loads(text)
            except (ValueError, RecursionError):
                parsed = None
            if _matches_type(kind, parsed):
                return parsed
    elif kind is InputType.INTEGER and isinstance(value, float) and value.is_integer():
        return int(value)
    examples = {
        InputType.STRING: "text",
        InputType.INTEGER: "a whole number such as 3",
        InputType.NUMBER: "a number such as 2.5",
        InputType.BOOLEAN: "true or false",
        InputType.LIST: 'a JSON list such as ["a", "b"]',
        InputType.OBJECT: 'a JSON object such as {"key": "value"}',
    }
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "…"
    raise ValidationError(
        f"{field} must be {examples[kind]} (type {kind.value}); got {shown}",
        field=field,
        hint=f"give {name} as {examples[kind]}",
    )


def coerce_inputs(doc: WorkflowDocument, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared input's value: given ones converted to their type, others defaulted.

    Text from the command line is converted: ``"3"`` for an integer, ``true``/``false``
    (also yes/no, on/off, 1/0) for a boolean, JSON for a list or an object. Unknown and
    missing required inputs are refused, naming them all.
    """
    declared = ", ".join(doc.inputs) or "no inputs"
    unknown = [name for name in given if name not in doc.inputs]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise ValidationError(
            f"unknown input{plural} {', '.join(unknown)}; this workflow declares {declared}",
            field=f"inputs.{unknown[0]}",
            hint="check the spelling, or declare the input under inputs:",
        )
    missing = [name for name, spec in doc.inputs.items() if spec.required and name not in given]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise ValidationError(
            f"missing required input{plural} {', '.join(missing)}",
            field=f"inputs.{missing[0]}",
            hint="give a value for each; only inputs with a default may be left out",
        )
    values: dict[str, Any] = {}
    for name, spec in doc.inputs.items():
        if name in given:
            values[name] = _coerce(name, spec, given[name])
        else:
            values[name] = copy.deepcopy(spec.default)
    return values


def _known(kind: str, names: Collection[str]) -> str:
    return f"known {kind}: {', '.join(sorted(names))}" if names else f"there are no {kind} yet"


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def _step_expressions(step: Step, where: str) -> Iterator[tuple[str, str, bool]]:
    """(path, text, is_one_expression) for each expression a step holds."""
    for path, name in ((f"{where}.target", step.target), (f"{where}.account_key", step.account_key)):
        if name is not None and is_template(name):
            yield path, name, False
    if step.if_ is not None:
        yield f"{where}.if", step.if_, True
    if isinstance(step.for_each, str):
        yield f"{where}.for_each", step.for_each, True
    elif isinstance(step.for_each, list):
        for path, text in _strings(step.for_each, f"{where}.for_each"):
            if is_template(text):
                yield path, text, False
    if step.literal:
        return
    for path, text in _strings(step.with_, f"{where}.with"):
        if is_template(text):
            yield path, text, False


def _expression_problems(
    doc: WorkflowDocument, index: int, step: Step, path: str, text: str, expression: bool
) -> list[str]:
    try:
        check_syntax(text, expression=expression)
        names = referenced_names(text, expression=expression)
    except ValidationError as exc:
        return [f"{path}: {exc.message}"]
    step_ids = [s.id for s in doc.steps]
    problems: list[str] = []
    for name in sorted(names):
        root, _, key = name.partition(".")
        if root == "inputs":
            if key and key not in doc.inputs:
                declared = ", ".join(doc.inputs) or "none"
                problems.append(f"{path}: inputs.{key} is not a declared input (declared: {declared})")
        elif root == "steps":
            if not key:
                continue
            if key not in step_ids:
                problems.append(f"{path}: there is no step '{key}' (steps: {', '.join(step_ids)})")
            elif step_ids.index(key) >= index:
                problems.append(
                    f"{path}: steps.{key} has not run at this point; "
                    "an expression can only read the steps before its own"
                )
        elif root == "item":
            # `if` and `for_each` are evaluated once, before the items exist
            where = _step_path(index)
            per_item = path.startswith((f"{where}.with", f"{where}.target", f"{where}.account_key"))
            if step.for_each is None or not per_item:
                problems.append(
                    f"{path}: item is only defined in the with, target and account_key "
                    "of a step with for_each"
                )
        elif root == "trigger" and not doc.triggers:
            problems.append(
                f"{path}: trigger is only defined in runs started by an email trigger, "
                "and this workflow declares no triggers"
            )
        elif root not in CONTEXT_NAMES:
            problems.append(
                f"{path}: unknown name '{root}'; expressions can read inputs, steps, "
                "item (in a step with for_each) and trigger (in a run started by an email trigger)"
            )
    return problems


def _step_path(index: int) -> str:
    return f"steps[{index}]"


def check_references(
    doc: WorkflowDocument,
    *,
    activities: Collection[str],
    targets: Collection[str],
    account_keys: Collection[str],
) -> list[str]:
    """Every broken reference in `doc`, in words, in document order; empty when all is well.

    Checks activities (exact names), targets and account keys (display names compared
    case-insensitively), the syntax of every expression, ``steps.X`` read before step X
    runs or naming no step, undeclared ``inputs.Y``, ``item`` outside ``for_each`` steps,
    unknown names, and each schedule's inputs.
    """
    problems: list[str] = []
    target_names = {name.casefold() for name in targets}
    key_names = {name.casefold() for name in account_keys}

    def check_name(path: str, name: str | None, known: set[str], kind: str, listed: Collection[str]) -> None:
        if name is None or is_template(name):
            return  # a templated name is checked with the expressions, and resolved at run time
        if name.casefold() not in known:
            problems.append(f"{path}: {kind} '{name}' does not exist; {_known(kind + 's', listed)}")

    def check_target(path: str, name: str | None) -> None:
        check_name(path, name, target_names, "target", targets)

    def check_key(path: str, name: str | None) -> None:
        check_name(path, name, key_names, "account key", account_keys)

    check_target("target", doc.target)
    check_key("account_key", doc.account_key)
    for index, schedule in enumerate(doc.schedules):
        try:
            coerce_inputs(doc, schedule.inputs)
        except ValidationError as exc:
            problems.append(f"schedules[{index}].inputs: {exc.message}")
    for index, trigger in enumerate(doc.triggers):
        check_target(f"triggers[{index}].target", trigger.target)
        try:
            coerce_inputs(doc, trigger.inputs)
        except ValidationError as exc:
            problems.append(f"triggers[{index}].inputs: {exc.message}")
    for index, step in enumerate(doc.steps):
        where = _step_path(index)
        if step.activity not in activities:
            problems.append(
                f"{where}.activity: unknown activity '{step.activity}'; {_known('activities', activities)}"
            )
        check_target(f"{where}.target", step.target)
        check_key(f"{where}.account_key", step.account_key)
        for path, text, expression in _step_expressions(step, where):
            problems.extend(_expression_problems(doc, index, step, path, text, expression))
    return problems


def references(doc: WorkflowDocument) -> dict[str, set[str]]:
    """The names `doc` depends on, as written: ``targets``, ``account_keys`` and ``activities``.

    Names computed by an expression (``{{ inputs.target }}``) are not listed.
    """

    def named(*names: str | None) -> set[str]:
        return {name for name in names if name is not None and not is_template(name)}

    return {
        "targets": named(doc.target, *(s.target for s in doc.steps), *(t.target for t in doc.triggers)),
        "account_keys": named(doc.account_key, *(s.account_key for s in doc.steps)),
        "activities": {step.activity for step in doc.steps},
    }
