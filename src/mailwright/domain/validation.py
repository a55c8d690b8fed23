"""Turning Pydantic's validation errors into one readable ValidationError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel

from mailwright.errors import FieldProblem, ValidationError

M = TypeVar("M", bound=BaseModel)


def describe(error: pydantic.ValidationError) -> ValidationError:
    """The first problem, in words, with the field it concerns."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    message = message[0].lower() + message[1:] if message else message
    if first["type"] == "missing":
        text = f"{field} is required"
    elif first["type"] == "extra_forbidden":
        text = f"{field} is not a known field"
    else:
        shown = first.get("input")
        got = f" (got {shown!r})" if isinstance(shown, str | int | float) and len(repr(shown)) < 80 else ""
        text = f"{field}: {message}{got}" if field else message
    more = len(error.errors()) - 1
    if more:
        text += f"; and {more} more problem{'s' if more > 1 else ''}"
    return ValidationError(text, field=field, field_problems=tuple(_problem(e) for e in error.errors()))


def _bound(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# Pydantic's error types in plain words, after the field's name ("Port must be 65535 or less").
_PREDICATES: dict[str, Callable[[dict[str, Any]], str]] = {
    "missing": lambda ctx: "is required",
    "less_than_equal": lambda ctx: f"must be {_bound(ctx.get('le'))} or less",
    "less_than": lambda ctx: f"must be less than {_bound(ctx.get('lt'))}",
    "greater_than_equal": lambda ctx: f"must be {_bound(ctx.get('ge'))} or more",
    "greater_than": lambda ctx: f"must be more than {_bound(ctx.get('gt'))}",
    "int_parsing": lambda ctx: "must be a whole number",
    "int_from_float": lambda ctx: "must be a whole number",
    "float_parsing": lambda ctx: "must be a number",
    "string_too_short": lambda ctx: (
        "must not be empty"
        if ctx.get("min_length") == 1
        else f"must have at least {ctx.get('min_length')} characters"
    ),
    "string_too_long": lambda ctx: f"must have at most {ctx.get('max_length')} characters",
    "extra_forbidden": lambda ctx: "is not a known field",
    "enum": lambda ctx: f"must be one of {ctx.get('expected')}",
    "literal_error": lambda ctx: f"must be one of {ctx.get('expected')}",
}


def _problem(error: Any) -> FieldProblem:
    """One Pydantic error as a field's problem, in words that need no field-name prefix."""
    field = ".".join(str(part) for part in error["loc"])
    predicate = _PREDICATES.get(error["type"])
    if predicate is not None:
        return FieldProblem(field, predicate(error.get("ctx") or {}), predicate=True)
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return FieldProblem(field, message)


def validate_model(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise describe(exc) from None
