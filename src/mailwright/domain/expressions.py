"""`{{ … }}` expressions in workflow documents, evaluated in a locked-down Jinja2 sandbox.

A workflow step's inputs, its ``if`` and its ``for_each`` may hold expressions::

    to: ["{{ inputs.recipient }}"]                       # one expression: its native value
    subject: "Alert {{ inputs.count }} for {{ item }}"   # text with expressions: a string
    if: "{{ steps.alert.status == 'succeeded' }}"        # a condition, braces optional

The environment is Jinja2's `ImmutableSandboxedEnvironment` with `StrictUndefined`,
autoescape off, no loader (so no ``include``/``import``/``extends``) and no extensions.
On top of the sandbox:

- Attributes: nothing starting with ``_``, nothing on functions, types or modules; of the
  methods of text, lists, tuples and dicts only an allow-list of read-only ones
  (`str.format` is not among them). On a dict, a key wins over a method of the same
  name, so ``output.items`` is the ``items`` key when there is one.
- Globals: only ``range`` (at most `MAX_RANGE_ITEMS` items) and ``dict``. Filters: Jinja's
  defaults except ``pprint``; ``tojson`` writes plain JSON (sorted keys, no HTML escaping).
- Statements: ``if``, ``for`` (not ``recursive``), ``set``, ``with`` and ``filter``
  blocks. Macros, call blocks, blocks, ``include``, ``import``, ``extends``,
  ``autoescape`` and the name ``self`` are refused when the text is compiled.
- Work is bounded, so a document cannot exhaust memory: rendered text is at most
  `MAX_OUTPUT_CHARS`; every value an expression creates is at most `MAX_VALUE_SIZE`
  characters or items (nested lists and dicts counted in full; a value taken as it is from
  the context counts as one); ``*``, ``**``, ``%``, ``+`` and the widening filters
  (center, indent, wordwrap, replace, format, join, batch, slice) are checked before they
  run; loops run at most `MAX_LOOP_ITERATIONS` times per render; a native result is at
  most `MAX_RESULT_SIZE` characters or items.
- Time is bounded too: the async entry points (`render_value_async`,
  `evaluate_condition_async`) render in a worker thread, off the event loop, with a
  deadline (`set_time_limit`, from ``MAILWRIGHT_EXPRESSION_TIME_LIMIT``; 2 s by default).
  The sandbox's hooks (every call, attribute and item access, operator, filter, loop
  iteration and output, and the size checks' walks) compare the clock with the deadline,
  so Python-level work stops soon after it; one C-level operation between two hooks
  (sorting or joining a list of up to `MAX_VALUE_SIZE` items) runs to its end first.

Every failure (syntax, undefined name, sandbox refusal, limit, type error) becomes one
`mailwright.errors.ValidationError` that quotes the expression and says what went wrong.
The caller builds the context and guarantees that it holds no secrets.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import json
import re
import threading
import time
import types
from collections import abc
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import chain
from typing import Any, Final, cast

from jinja2 import Environment, StrictUndefined, meta, nodes, pass_context, pass_environment
from jinja2.environment import Template, TemplateExpression
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.filters import FILTERS, make_attrgetter
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from mailwright.domain.addresses import RenderedText
from mailwright.errors import ValidationError

__all__ = [
    "DEFAULT_TIME_LIMIT",
    "GLOBAL_NAMES",
    "MAX_LOOP_ITERATIONS",
    "MAX_OUTPUT_CHARS",
    "MAX_RANGE_ITEMS",
    "MAX_RESULT_SIZE",
    "MAX_VALUE_SIZE",
    "check_syntax",
    "evaluate",
    "evaluate_condition",
    "evaluate_condition_async",
    "is_template",
    "referenced_names",
    "render_value",
    "render_value_async",
    "set_time_limit",
    "single_expression",
    "time_limit",
]

MAX_OUTPUT_CHARS: Final = 1_000_000  # rendered text, and text made from one value
MAX_VALUE_SIZE: Final = 1_000_000  # a value an expression creates (characters or items)
MAX_RESULT_SIZE: Final = 64_000_000  # a native result, counted in full (may hold context data)
MAX_RANGE_ITEMS: Final = 10_000  # one range()
MAX_LOOP_ITERATIONS: Final = 100_000  # all {% for %} iterations of one render
MAX_INT_BITS: Final = 65_536  # integers made with * and **
_MAX_EMITTED: Final = 4 * MAX_OUTPUT_CHARS  # everything {{ }} writes, buffered blocks included
_CACHED_SOURCE_CHARS: Final = 8192  # longer texts are compiled each time, not cached
DEFAULT_TIME_LIMIT: Final = 2.0  # seconds one rendering may take (async entry points)
_RENDER_THREADS: Final = 4  # threads that render expressions off the event loop
_YIELD_EVERY: Final = 0.002  # seconds a rendering thread holds the GIL at most between two hooks

GLOBAL_NAMES: Final = frozenset({"range", "dict"})

# Internal filters the hardening pass inserts; ':' keeps them out of reach of template text.
_LOOP: Final = "mailwright:loop"
_BIND: Final = "mailwright:bind"
_CONCAT: Final = "mailwright:concat"

_EXAMPLE_CONDITION: Final = "{{ steps.alert.status == 'succeeded' }}"


class _Refused(Exception):
    """A limit of the sandbox was reached; becomes a ValidationError quoting the expression."""


class _OverBudget(_Refused):
    """The rendering's deadline passed (checked in the sandbox's hooks)."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"expression took longer than {limit:g} s; it was stopped")


# --------------------------------------------------------------------------------------
# Per-render bookkeeping
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _RenderState:
    known: frozenset[int] = frozenset()  # ids of the context's values: they count as one
    iterations: int = 0
    emitted: int = 0
    deadline: float | None = None  # time.monotonic() after which the rendering stops
    limit: float = 0.0  # the budget the deadline was made from, for the message
    next_yield: float = 0.0  # when the rendering next lets other threads run (see _check_time)


_time_limit = DEFAULT_TIME_LIMIT


def set_time_limit(seconds: float) -> None:
    """The budget of each rendering through the async entry points (MAILWRIGHT_EXPRESSION_TIME_LIMIT)."""
    global _time_limit
    if not seconds > 0:
        raise ValueError("the expression time limit must be a positive number of seconds")
    _time_limit = float(seconds)


def time_limit() -> float:
    """The budget of each rendering through the async entry points, in seconds."""
    return _time_limit


_STATE: ContextVar[_RenderState | None] = ContextVar("mailwright_expression_render", default=None)


def _state() -> _RenderState:
    """The current render's state; compile-time constant folding gets a throwaway one."""
    return _STATE.get() or _RenderState()


def _check_time() -> None:
    """Stops the rendering once its deadline has passed (called from the sandbox's hooks).

    A rendering with a deadline runs in a worker thread; every `_YIELD_EVERY` seconds it
    lets go of the GIL for a moment, so the event loop's thread never waits for it longer.
    """
    state = _STATE.get()
    if state is None or state.deadline is None:
        return
    now = time.monotonic()
    if now > state.deadline:
        raise _OverBudget(state.limit)
    if now > state.next_yield:
        time.sleep(0)  # releases the GIL: a waiting thread (the event loop) runs now
        state.next_yield = time.monotonic() + _YIELD_EVERY


def _context_ids(context: Mapping[str, Any]) -> frozenset[int]:
    seen: set[int] = set()
    todo: list[Any] = [context]
    while todo:
        value = todo.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, Mapping):
            todo.extend(value.values())
        elif isinstance(value, list | tuple):
            todo.extend(value)
    return frozenset(seen)


# --------------------------------------------------------------------------------------
# Sizes and limits
# --------------------------------------------------------------------------------------


def _int_size(number: int) -> int:
    return max(1, number.bit_length() // 3)  # about its decimal digits


def _measure(value: Any, limit: int, *, what: str, known: frozenset[int] = frozenset()) -> int:
    """Characters plus items of `value`, nested containers counted in full.

    Shared sub-values are counted once per reference (that is what text or JSON made from
    the value costs), but walked once. Objects in `known` count as one. Stops as soon as
    the count passes `limit`. Undefined values raise their error here.
    """
    memo: dict[int, int] = {}
    alive: list[Any] = []  # keeps temporaries alive so their ids stay unique

    def size(item: Any) -> int:
        if isinstance(item, str | bytes):
            return 1 if id(item) in known else max(len(item), 1)
        if isinstance(item, bool) or item is None or isinstance(item, float):
            return 1
        if isinstance(item, int):
            return _int_size(item)
        if isinstance(item, Undefined):
            str(item)  # StrictUndefined: raises the undefined (or unsafe attribute) error
            return 1
        if id(item) in known:
            return 1
        if isinstance(item, range):
            return len(item) + 1
        children: Iterator[Any]
        if isinstance(item, Mapping):
            children = chain.from_iterable(item.items())
        elif isinstance(item, abc.Sequence | abc.Set | abc.MappingView):
            children = iter(cast(Iterable[Any], item))
        else:
            return 1
        key = id(item)
        if key in memo:
            return memo[key]
        alive.append(item)
        _check_time()
        total = 1
        for count, child in enumerate(children):
            total += size(child)
            if total > limit:
                raise _Refused(f"{what} is larger than the limit of {limit:,} characters or items")
            if not count & 0x3FF:
                _check_time()
        memo[key] = total
        return total

    total = size(value)
    if total > limit:
        raise _Refused(f"{what} is larger than the limit of {limit:,} characters or items")
    return total


def _check_size(size: int, what: str) -> None:
    if size > MAX_VALUE_SIZE:
        raise _Refused(
            f"{what} would make about {size:,} characters or items; the limit is {MAX_VALUE_SIZE:,}"
        )


def _check_created(value: Any) -> None:
    """A value an expression made stays within MAX_VALUE_SIZE (context data counts as one)."""
    if isinstance(value, abc.Iterator):
        return  # lazy: each item is checked where it is used
    _measure(value, MAX_VALUE_SIZE, what="the value", known=_state().known)


def _check_text_input(value: Any) -> None:
    """A value about to be turned into text is small enough for that text to be bounded."""
    if isinstance(value, str) or value is None or isinstance(value, bool | int | float):
        return
    _measure(value, MAX_OUTPUT_CHARS, what="the value to turn into text")


def _check_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise _Refused(f"the number would have about {bits:,} bits; the limit is {MAX_INT_BITS:,}")


def _bounded_join(pieces: Iterable[str], limit: int = MAX_OUTPUT_CHARS) -> str:
    parts: list[str] = []
    total = 0
    for piece in pieces:
        total += len(piece)
        if total > limit:
            raise _Refused(f"the text would be longer than the limit of {limit:,} characters")
        parts.append(piece)
        if not len(parts) & 0x3FF:
            _check_time()
    return "".join(parts)


def _take(values: Iterable[Any], limit: int, what: str) -> list[Any]:
    if isinstance(values, abc.Sized) and len(values) > limit:
        raise _Refused(f"{what} was given more than {limit:,} items")
    taken: list[Any] = []
    for value in values:
        taken.append(value)
        if len(taken) > limit:
            raise _Refused(f"{what} was given more than {limit:,} items")
    return taken


def _is_int(value: Any) -> bool:
    return isinstance(value, int)


def _check_repeat(left: Any, right: Any) -> None:
    for sequence, times in ((left, right), (right, left)):
        if isinstance(sequence, str | bytes | list | tuple) and _is_int(times) and times > 0:
            _check_size(len(sequence) * times, "repeating with *")
    if _is_int(left) and _is_int(right):
        _check_bits(left.bit_length() + right.bit_length())


def _check_power(base: Any, exponent: Any) -> None:
    if _is_int(base) and _is_int(exponent) and exponent > 0 and abs(base) > 1:
        _check_bits(base.bit_length() * exponent)


def _check_add(left: Any, right: Any) -> None:
    sequences = (str, bytes, list, tuple)
    if isinstance(left, sequences) and isinstance(right, sequences):
        _check_size(len(left) + len(right), "joining with +")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _check_percent(template: str, values: Any) -> None:
    """printf-style formatting: widths and precisions count towards the size."""
    total = len(template) + _measure(values, MAX_OUTPUT_CHARS, what="the values to format")
    for match in _PERCENT_SPEC.finditer(template):
        for number in match.groups():
            if number == "*":
                raise _Refused("'*' widths are not supported in % formatting; write the width as a number")
            if number:
                if len(number) > 7:
                    raise _Refused(f"the width {number} in % formatting is too large")
                total += int(number)
    _check_size(total, "% formatting")


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    try:
        count = len(numbers)
    except OverflowError:
        count = MAX_RANGE_ITEMS + 1
    if count > MAX_RANGE_ITEMS:
        raise _Refused(f"range() would give more than {MAX_RANGE_ITEMS:,} items")
    return numbers


def _finalize(value: Any) -> Any:
    """Every {{ }} output: bounded before it becomes text, and counted."""
    _check_time()
    state = _state()
    if isinstance(value, str):
        state.emitted += len(value)
    else:
        state.emitted += _measure(value, MAX_OUTPUT_CHARS, what="the value to output")
    if state.emitted > _MAX_EMITTED:
        raise _Refused(f"the template would write more than the limit of {_MAX_EMITTED:,} characters")
    return value


# --------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------

# Filters that turn their arguments into text: non-text arguments are bounded first.
_TEXT_FILTERS: Final = frozenset(
    {
        "capitalize",
        "center",
        "e",
        "escape",
        "forceescape",
        "format",
        "indent",
        "lower",
        "replace",
        "safe",
        "string",
        "striptags",
        "title",
        "trim",
        "truncate",
        "upper",
        "urlencode",
        "urlize",
        "wordcount",
        "wordwrap",
        "xmlattr",
    }
)
_STRUCTURE_FILTERS: Final = frozenset(
    {
        "abs",
        "attr",
        "batch",
        "count",
        "d",
        "default",
        "dictsort",
        "filesizeformat",
        "first",
        "float",
        "groupby",
        "int",
        "items",
        "last",
        "length",
        "list",
        "map",
        "max",
        "min",
        "random",
        "reject",
        "rejectattr",
        "reverse",
        "round",
        "select",
        "selectattr",
        "slice",
        "sort",
        "sum",
        "unique",
    }
)
# Left out on purpose: pprint (unbounded text from any value). join and tojson are ours.

_PASSED_ARGS = (Environment, Context, EvalContext)


def _pre_center(arguments: dict[str, Any]) -> None:
    width = arguments["width"]
    if _is_int(width):
        _check_size(width, "center")


def _pre_indent(arguments: dict[str, Any]) -> None:
    text, width = arguments["s"], arguments["width"]
    pad = len(width) if isinstance(width, str) else width if _is_int(width) else 0
    if isinstance(text, str):
        _check_size(len(text) + (text.count("\n") + 1) * max(pad, 0), "indent")


def _pre_wordwrap(arguments: dict[str, Any]) -> None:
    text, width, wrap = arguments["s"], arguments["width"], arguments["wrapstring"]
    if wrap is None:
        wrap = arguments["environment"].newline_sequence
    if isinstance(text, str) and _is_int(width) and isinstance(wrap, str):
        lines = len(text) // max(width, 1) + text.count("\n") + 1
        _check_size(len(text) + lines * len(wrap), "wordwrap")


def _pre_replace(arguments: dict[str, Any]) -> None:
    text, old, new = str(arguments["s"]), str(arguments["old"]), str(arguments["new"])
    count = text.count(old) if old else len(text) + 1
    limit = arguments["count"]
    if _is_int(limit) and limit >= 0:
        count = min(count, limit)
    _check_size(len(text) + count * max(len(new) - len(old), 0), "replace")


def _pre_format(arguments: dict[str, Any]) -> None:
    _check_percent(str(arguments["value"]), arguments["kwargs"] or arguments["args"])


def _pre_batch(arguments: dict[str, Any]) -> None:
    if _is_int(arguments["linecount"]):
        _check_size(arguments["linecount"], "batch")


def _pre_slice(arguments: dict[str, Any]) -> None:
    slices = arguments["slices"]
    if _is_int(slices) and slices > MAX_RANGE_ITEMS:
        raise _Refused(f"slice() into more than {MAX_RANGE_ITEMS:,} parts")


_PRECHECKS: Final[dict[str, Callable[[dict[str, Any]], None]]] = {
    "center": _pre_center,
    "indent": _pre_indent,
    "wordwrap": _pre_wordwrap,
    "replace": _pre_replace,
    "format": _pre_format,
    "batch": _pre_batch,
    "slice": _pre_slice,
}


def _guard_filter(
    func: Callable[..., Any], *, text: bool, precheck: Callable[[dict[str, Any]], None] | None
) -> Callable[..., Any]:
    """Jinja's filter, with its inputs and result bounded. Keeps its pass_* marker.

    Some of Jinja's filters are sync/async dispatchers that receive an eval context their
    sync function does not take; the arguments are bound against the sync function.
    """
    target = inspect.unwrap(func)
    signature = inspect.signature(target)
    drop_first = hasattr(func, "jinja_pass_arg") and not hasattr(target, "jinja_pass_arg")

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_time()
        if text or precheck is not None:
            bound = signature.bind(*(args[1:] if drop_first else args), **kwargs)
            bound.apply_defaults()
            if text:
                for value in bound.arguments.values():
                    if not isinstance(value, _PASSED_ARGS):
                        _check_text_input(value)
            if precheck is not None:
                precheck(bound.arguments)
        result = func(*args, **kwargs)
        _check_time()
        _check_created(result)
        return result

    return guarded


def _text_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    return _measure(value, MAX_OUTPUT_CHARS, what="an item to join")


@pass_environment
def _join(
    environment: Environment, value: Iterable[Any], d: Any = "", attribute: str | int | None = None
) -> str:
    _check_time()
    items = _take(value, MAX_VALUE_SIZE, "join")
    if attribute is not None:
        getter = make_attrgetter(environment, attribute)
        items = [getter(item) for item in items]
    _check_text_input(d)
    separator = str(d)
    total = len(separator) * max(len(items) - 1, 0)
    for count, item in enumerate(items):
        total += _text_size(item)
        _check_size(total, "join")
        if not count & 0x3FF:
            _check_time()
    result = separator.join(str(item) for item in items)
    _check_time()
    return result


def _tojson(value: Any, indent: int | None = None) -> str:
    if indent is not None and (
        isinstance(indent, bool) or not isinstance(indent, int) or not 0 <= indent <= 8
    ):
        raise _Refused("tojson's indent must be a whole number from 0 to 8 (the limit keeps the text small)")
    _check_text_input(value)
    encoder = json.JSONEncoder(ensure_ascii=False, sort_keys=True, indent=indent, allow_nan=False)
    return _bounded_join(encoder.iterencode(value))


@pass_context  # never folded at compile time: every iteration must be counted
def _loop_filter(context: Context, values: Any) -> Any:
    state = _state()
    _check_created(values)
    if isinstance(values, abc.Sized):
        _count_iterations(state, len(values))
        return values if state.deadline is None else _timed(cast(Iterable[Any], values))
    return _counted(values, state)


def _counted(values: Iterable[Any], state: _RenderState) -> Iterator[Any]:
    for value in values:
        _count_iterations(state, 1)
        _check_time()
        yield value


def _timed(values: Iterable[Any]) -> Iterator[Any]:
    """Each iteration of a loop with a deadline checks it (the loop's body may add no other hook)."""
    for value in values:
        _check_time()
        yield value


def _count_iterations(state: _RenderState, count: int) -> None:
    state.iterations += count
    if state.iterations > MAX_LOOP_ITERATIONS:
        raise _Refused(f"loops would run more than {MAX_LOOP_ITERATIONS:,} times")


def _bind_filter(value: Any) -> Any:
    _check_time()
    _check_created(value)
    return value


def _concat_filter(values: list[Any]) -> str:
    total = 0
    for value in values:
        total += _text_size(value)
        _check_size(total, "joining with ~")
    return "".join(str(value) for value in values)


def _filters() -> dict[str, Callable[..., Any]]:
    table = {
        name: _guard_filter(FILTERS[name], text=name in _TEXT_FILTERS, precheck=_PRECHECKS.get(name))
        for name in sorted(_TEXT_FILTERS | _STRUCTURE_FILTERS)
    }
    table.update(
        {"join": _join, "tojson": _tojson, _LOOP: _loop_filter, _BIND: _bind_filter, _CONCAT: _concat_filter}
    )
    return table


# --------------------------------------------------------------------------------------
# The environment
# --------------------------------------------------------------------------------------

_SAFE_METHODS: Final[tuple[tuple[type, frozenset[str]], ...]] = (
    (
        str,
        frozenset(
            [
                "capitalize",
                "casefold",
                "count",
                "endswith",
                "find",
                "index",
                "isalnum",
                "isalpha",
                "isascii",
                "isdecimal",
                "isdigit",
                "isidentifier",
                "islower",
                "isnumeric",
                "isprintable",
                "isspace",
                "istitle",
                "isupper",
                "lower",
                "lstrip",
                "partition",
                "removeprefix",
                "removesuffix",
                "rfind",
                "rindex",
                "rpartition",
                "rsplit",
                "rstrip",
                "split",
                "splitlines",
                "startswith",
                "strip",
                "swapcase",
                "title",
                "upper",
            ]
        ),
    ),
    (abc.Mapping, frozenset({"get", "items", "keys", "values"})),
    (list, frozenset({"count", "index"})),
    (tuple, frozenset({"count", "index"})),
    (LoopContext, frozenset({"cycle", "changed"})),
)
# Never add str.format or str.format_map: they reach attributes through "{0.__class__}".

_OPAQUE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    functools.partial,
)

_REFUSED_NODES: Final[dict[type[nodes.Node], str]] = {
    nodes.Macro: "{% macro %}",
    nodes.CallBlock: "{% call %}",
    nodes.Block: "{% block %}",
    nodes.Extends: "{% extends %}",
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from … import %}",
    nodes.ScopedEvalContextModifier: "{% autoescape %}",
    nodes.EvalContextModifier: "{% autoescape %}",
    nodes.ExprStmt: "{% do %}",
    nodes.Continue: "{% continue %}",
    nodes.Break: "{% break %}",
}


class _Hardener(NodeTransformer):
    """Refuses what expressions may not use; inserts the bounding filters."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment

    def generic_visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> nodes.Node:
        refused = _REFUSED_NODES.get(type(node))
        if refused is not None:
            raise TemplateSyntaxError(f"{refused} is not available in workflow expressions", node.lineno)
        return super().generic_visit(node, *args, **kwargs)

    def visit_Name(self, node: nodes.Name) -> nodes.Node:
        if node.name == "self":
            raise TemplateSyntaxError("'self' is not available in workflow expressions", node.lineno)
        return node

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        if node.recursive:
            raise TemplateSyntaxError(
                "recursive loops are not available in workflow expressions", node.lineno
            )
        node.iter = self._wrap(node.iter, _LOOP)
        return node

    def visit_Assign(self, node: nodes.Assign) -> nodes.Node:
        self.generic_visit(node)
        node.node = self._wrap(node.node, _BIND)
        return node

    def visit_With(self, node: nodes.With) -> nodes.Node:
        self.generic_visit(node)
        node.values = [self._wrap(value, _BIND) for value in node.values]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return self._wrap(nodes.List(list(node.nodes), lineno=node.lineno), _CONCAT)

    def _wrap(self, expr: nodes.Node, name: str) -> nodes.Filter:
        wrapped = nodes.Filter(expr, name, [], [], None, None, lineno=expr.lineno)
        wrapped.set_environment(self.environment)
        return wrapped


class _SandboxEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, _OPAQUE):
            return False
        if callable(value):
            return any(isinstance(obj, kind) and attr in names for kind, names in _SAFE_METHODS)
        return True

    def wrap_str_format(self, value: Any) -> None:
        return None  # str.format is refused by is_safe_attribute instead

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_time()
        return super().getitem(obj, argument)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_time()
        if isinstance(obj, abc.Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_time()
        if operator == "*":
            _check_repeat(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "+":
            _check_add(left, right)
        elif operator == "%" and isinstance(left, str):
            _check_percent(left, right)
        result = super().call_binop(context, operator, left, right)
        _check_created(result)
        return result

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        result = super().call(context, obj, *args, **kwargs)
        _check_time()
        _check_created(result)
        return result

    def _generate(
        self, source: nodes.Template, name: str | None, filename: str | None, defer_init: bool = False
    ) -> str:
        _Hardener(self).visit(source)
        return super()._generate(source, name, filename, defer_init)


def _environment() -> _SandboxEnvironment:
    env = _SandboxEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize,
        auto_reload=False,
        cache_size=0,
    )
    env.globals.clear()
    env.globals.update({"range": _bounded_range, "dict": dict})
    env.filters.clear()
    env.filters.update(_filters())
    env.concat = _bounded_join  # type: ignore[method-assign]  # buffered {% set %} blocks
    return env


_ENV: Final = _environment()


@functools.lru_cache(maxsize=512)
def _cached_template(text: str) -> Template:
    return _ENV.from_string(text)


@functools.lru_cache(maxsize=512)
def _cached_expression(source: str) -> TemplateExpression:
    return _ENV.compile_expression(source, undefined_to_none=False)


def _compile_template(text: str) -> Template:
    return _cached_template(text) if len(text) <= _CACHED_SOURCE_CHARS else _ENV.from_string(text)


def _compile_expression(source: str) -> TemplateExpression:
    if len(source) <= _CACHED_SOURCE_CHARS:
        return _cached_expression(source)
    return _ENV.compile_expression(source, undefined_to_none=False)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def _excerpt(text: str, line: int | None = None) -> str:
    lines = text.strip().splitlines() or [""]
    shown = (
        lines[line - 1] if line is not None and 1 <= line <= len(lines) and len(lines) > 1 else text.strip()
    )
    shown = " ".join(shown.split()) if "\n" not in shown else shown.splitlines()[0] + " …"
    return shown if len(shown) <= 100 else shown[:97] + "…"


def _template_line(exc: BaseException) -> int | None:
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _problem(exc: Exception) -> str:
    if isinstance(exc, SecurityError):
        return f"not allowed: {exc}"
    if isinstance(exc, RecursionError):
        return "the value is nested too deeply"
    if isinstance(exc, MemoryError):
        return "out of memory"
    text = str(exc).strip()
    if isinstance(exc, UndefinedError | _Refused):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_HINTS: Final[dict[type[Exception], str]] = {
    _OverBudget: "make it do less work (fewer loop iterations, smaller lists to sort or join, or the "
    "work done in a step), or raise MAILWRIGHT_EXPRESSION_TIME_LIMIT",
    UndefinedError: "check the name against the workflow's inputs and the ids of earlier steps",
    SecurityError: "expressions may read data, not reach into Python objects",
    _Refused: "make the value smaller, or do the work in a step instead of an expression",
}


@contextmanager
def _translated(text: str, field: str | None) -> Iterator[None]:
    """Any failure inside becomes one ValidationError that quotes `text`."""
    try:
        yield
    except ValidationError:
        raise
    except TemplateSyntaxError as exc:
        where = f"line {exc.lineno}" if exc.lineno else "syntax"
        raise ValidationError(
            f"`{_excerpt(text, exc.lineno)}`: {where}: {exc.message or 'invalid syntax'}",
            field=field,
            hint="fix the expression's syntax; expressions use Jinja syntax such as {{ inputs.name }}",
        ) from None
    except Exception as exc:
        line = _template_line(exc) if "\n" in text.strip() else None
        where = f" (line {line})" if line else ""
        hint = next((h for kind, h in _HINTS.items() if isinstance(exc, kind)), None)
        raise ValidationError(
            f"`{_excerpt(text, line)}`{where}: {_problem(exc)}", field=field, hint=hint
        ) from None


# --------------------------------------------------------------------------------------
# Native results
# --------------------------------------------------------------------------------------


class _Plain:
    """Converts a native result to plain data (lists, dicts, str, numbers), bounded in full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.memo: dict[int, tuple[Any, int]] = {}
        self.alive: list[Any] = []

    def convert(self, value: Any) -> tuple[Any, int]:
        if isinstance(value, str):
            return (value if type(value) is str else str.__str__(value)), max(len(value), 1)
        if value is None or isinstance(value, bool | float):
            return value, 1
        if isinstance(value, int):
            return value, _int_size(value)
        if isinstance(value, bytes):
            return value, max(len(value), 1)
        if isinstance(value, Undefined):
            str(value)  # raises the undefined error
            return None, 1
        if callable(value) or isinstance(value, type):
            raise _Refused("the expression gives a function, not a value; call it with () or remove it")
        key = id(value)
        if key in self.memo:
            return self.memo[key]
        self.alive.append(value)
        total = 1
        out: Any
        if isinstance(value, Mapping):
            out = {}
            for item_key, item in value.items():
                plain_key, key_size = self.convert(item_key)
                plain_item, item_size = self.convert(item)
                out[plain_key] = plain_item
                total = self._add(total, key_size + item_size)
        elif isinstance(value, abc.Iterable):
            out = []
            for item in value:
                plain_item, item_size = self.convert(item)
                out.append(plain_item)
                total = self._add(total, item_size)
                if not len(out) & 0x3FF:
                    _check_time()
        else:
            return value, 1
        self.memo[key] = (out, total)
        return out, total

    def _add(self, total: int, size: int) -> int:
        total += size
        if total > self.limit:
            raise _Refused(f"the result is larger than the limit of {self.limit:,} characters or items")
        return total


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def is_template(text: str) -> bool:
    """True when `text` holds Jinja markup ({{ }}, {% %} or {# #}); plain text is left as it is."""
    return "{{" in text or "{%" in text or "{#" in text


def single_expression(text: str) -> str | None:
    """The source inside the braces when `text` is exactly one ``{{ … }}`` (spaces around allowed).

    Such a text renders to the expression's native value; None for any other text.
    """
    stripped = text.strip()
    if not (stripped.startswith("{{") and stripped.endswith("}}")):
        return None
    try:
        tokens = list(_ENV.lex(stripped))
    except TemplateSyntaxError:
        return None
    kinds = [kind for _, kind, _ in tokens]
    if not kinds or kinds[0] != "variable_begin" or kinds[-1] != "variable_end":
        return None
    if kinds.count("variable_begin") != 1 or any(
        kind == "data" or (kind.endswith("_begin") and kind != "variable_begin") for kind in kinds
    ):
        return None
    begin, end = tokens[0][2], tokens[-1][2]
    return stripped[len(begin) : len(stripped) - len(end)]


def _expression_source(text: str, field: str | None) -> str:
    """The expression in `text`: bare (`x == 1`) or in one pair of braces (`{{ x == 1 }}`)."""
    stripped = text.strip()
    if not stripped:
        raise ValidationError(
            "the expression is empty", field=field, hint=f"write one such as {_EXAMPLE_CONDITION}"
        )
    single = single_expression(stripped)
    if single is not None:
        return single
    if is_template(stripped):
        raise ValidationError(
            f"`{_excerpt(text)}` must be one expression, either bare or in one {{{{ }}}} pair",
            field=field,
            hint=f"for example {_EXAMPLE_CONDITION}",
        )
    return stripped


def _render_text(text: str, context: dict[str, Any], field: str | None) -> Any:
    if not is_template(text):
        return text
    single = single_expression(text)
    if single is not None:
        return _marked(_evaluate_source(single, text, context, field))
    with _translated(text, field):
        template = _compile_template(text)
        return _marked(_bounded_join(template.generate(context)))


def _marked(value: Any) -> Any:
    """Text an expression produced, marked as such (an address entry is then never split).

    Only text that could be split (it holds a comma or a semicolon) is marked: marking
    copies the string, and a large value from the context is otherwise passed on as it is.
    """
    if isinstance(value, str):
        return _mark(value)
    if isinstance(value, list):
        return [_mark(item) if isinstance(item, str) else item for item in value]
    return value


def _mark(text: str) -> str:
    return RenderedText(text) if "," in text or ";" in text else text


def _evaluate_source(source: str, text: str, context: dict[str, Any], field: str | None) -> Any:
    with _translated(text, field):
        result = _compile_expression(source)(context)
        return _Plain(MAX_RESULT_SIZE).convert(result)[0]


def _render(value: Any, context: dict[str, Any], field: str | None) -> Any:
    if isinstance(value, str):
        return _render_text(value, context, field)
    if isinstance(value, Mapping):
        return {
            key: _render(item, context, f"{field}.{key}" if field else str(key))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_render(item, context, f"{field or ''}[{index}]") for index, item in enumerate(value)]
    return value


@contextmanager
def _rendering(context: Mapping[str, Any], time_limit: float | None = None) -> Iterator[dict[str, Any]]:
    deadline = None if time_limit is None else time.monotonic() + time_limit
    plain = dict(context)
    token = _STATE.set(_RenderState(known=_context_ids(plain), deadline=deadline, limit=time_limit or 0.0))
    try:
        yield plain
    finally:
        _STATE.reset(token)


def render_value(
    value: Any, context: Mapping[str, Any], *, field: str | None = None, time_limit: float | None = None
) -> Any:
    """`value` with every string in it rendered; dicts and lists are walked, other values kept.

    A string that is exactly one ``{{ expr }}`` (surrounding spaces allowed) gives the
    expression's native value (a list, a number, a dict…); a string with other Jinja markup
    gives rendered text; a string without markup is returned as it is. `field` names where
    `value` sits (e.g. ``steps[0].with``) for the errors, which are ValidationErrors.
    With `time_limit` (seconds), a rendering that takes longer fails with a ValidationError;
    this function runs on the caller's thread: the event loop uses `render_value_async`.
    """
    with _rendering(context, time_limit) as plain:
        return _render(value, plain, field)


def evaluate(
    text: str, context: Mapping[str, Any], *, field: str | None = None, time_limit: float | None = None
) -> Any:
    """The native value of one expression, bare (``x + 1``) or in braces (``{{ x + 1 }}``)."""
    source = _expression_source(text, field)
    with _rendering(context, time_limit) as plain:
        return _evaluate_source(source, text, plain, field)


def evaluate_condition(
    text: str, context: Mapping[str, Any], *, field: str | None = None, time_limit: float | None = None
) -> bool:
    """Whether the condition holds (Python truthiness of its value): ``{{ x }}`` or bare ``x``."""
    return bool(evaluate(text, context, field=field, time_limit=time_limit))


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _render_pool() -> ThreadPoolExecutor:
    """Threads of their own, so that slow expressions never hold the loop's default executor."""
    global _pool
    with _pool_lock:
        if _pool is None:
            # Once per process, when it first renders off the loop (a started server or worker):
            # what the process holds by then (modules, the app) leaves the collector's view. An
            # expression's churn of lists and frames triggers full collections, and each one
            # scanned that whole heap while every thread waited: 100-250 ms stalls of /healthz.
            gc.freeze()
            _pool = ThreadPoolExecutor(max_workers=_RENDER_THREADS, thread_name_prefix="mailwright-expr")
        return _pool


def _has_markup(value: Any) -> bool:
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, Mapping):
        return any(_has_markup(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_markup(item) for item in value)
    return False


async def render_value_async(
    value: Any, context: Mapping[str, Any], *, field: str | None = None, time_limit: float | None = None
) -> Any:
    """`render_value` in a worker thread, off the event loop, within `time_limit` seconds.

    `time_limit` defaults to `time_limit()` (MAILWRIGHT_EXPRESSION_TIME_LIMIT). A value
    without markup is copied on the caller's thread: nothing to render, no thread hop.
    """
    limit = _time_limit if time_limit is None else time_limit
    if not _has_markup(value):
        return render_value(value, context, field=field)
    call = functools.partial(render_value, value, context, field=field, time_limit=limit)
    return await asyncio.get_running_loop().run_in_executor(_render_pool(), call)


async def evaluate_condition_async(
    text: str, context: Mapping[str, Any], *, field: str | None = None, time_limit: float | None = None
) -> bool:
    """`evaluate_condition` in a worker thread, off the event loop, within `time_limit` seconds."""
    limit = _time_limit if time_limit is None else time_limit
    call = functools.partial(evaluate_condition, text, context, field=field, time_limit=limit)
    result: bool = await asyncio.get_running_loop().run_in_executor(_render_pool(), call)
    return result


def check_syntax(text: str, *, expression: bool = False, field: str | None = None) -> None:
    """Raises ValidationError (with the line) when `text` would not compile.

    With `expression`, `text` must be one expression, bare or in braces (``if`` and
    ``for_each``); otherwise it is text that may hold markup (step inputs).
    """
    if expression:
        source = _expression_source(text, field)
        with _translated(text, field):
            _compile_expression(source)
    elif is_template(text):
        with _translated(text, field):
            _compile_template(text)


def referenced_names(text: str, *, expression: bool = False) -> set[str]:
    """The context names `text` reads, each with its first attribute when it has one.

    ``{{ steps.alert.output.message_id ~ inputs['recipient'] }}`` gives
    ``{"steps.alert", "inputs.recipient"}``; a name read without an attribute (or with a
    computed key) is given alone (``item``, ``steps``). Names the text sets itself (loop
    variables, ``set``) and the globals (``range``, ``dict``) are left out. Raises
    ValidationError when `text` does not parse.
    """
    if expression:
        source = "{{ " + _expression_source(text, None) + " }}"
    elif is_template(text):
        source = text
    else:
        return set()
    with _translated(text, None):
        tree = _ENV.parse(source)
        undeclared = meta.find_undeclared_variables(tree) - GLOBAL_NAMES
    names: set[str] = set()
    consumed: set[int] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        inner = node.node  # type: ignore[attr-defined]
        if not (isinstance(inner, nodes.Name) and inner.ctx == "load" and inner.name in undeclared):
            continue
        key: object = None
        if isinstance(node, nodes.Getattr):
            key = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            key = node.arg.value
        if isinstance(key, str):
            names.add(f"{inner.name}.{key}")
            consumed.add(id(inner))
    for name_node in tree.find_all(nodes.Name):
        if name_node.ctx == "load" and name_node.name in undeclared and id(name_node) not in consumed:
            names.add(name_node.name)
    return names
