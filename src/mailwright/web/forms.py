"""Reading HTML form posts into plain values, for the service input models."""

from __future__ import annotations

from starlette.datastructures import FormData, UploadFile

from mailwright.errors import ValidationError


def text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def optional(form: FormData, name: str) -> str | None:
    return text(form, name) or None


def number(form: FormData, name: str, *, label: str, integer: bool = False) -> float | int | None:
    raw = text(form, name)
    if not raw:
        return None
    try:
        return int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ValidationError(f"{label} must be {kind}, not {raw!r}", field=name) from None


def boolean(form: FormData, name: str) -> bool:
    return text(form, name).lower() in {"1", "true", "on", "yes"}


def uploads(form: FormData, name: str) -> list[UploadFile]:
    return [f for f in form.getlist(name) if isinstance(f, UploadFile) and f.filename]


def values(form: FormData, *, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """What was typed, to show again after an error (never secrets: pass them in `exclude`)."""
    return {k: v for k, v in form.items() if isinstance(v, str) and k not in exclude and k != "csrf_token"}
