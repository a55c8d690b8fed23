"""Turning Pydantic's validation errors into one readable ValidationError."""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel

from mailwright.errors import ValidationError

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
    return ValidationError(text, field=field)


def validate_model(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise describe(exc) from None
