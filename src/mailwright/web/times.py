"""Times as the pages show them: relative ("3 min ago") with the absolute time (UTC) beside it."""

from __future__ import annotations

from datetime import UTC, datetime

from markupsafe import Markup, escape

_UNITS = ((86_400, "day"), (3_600, "h"), (60, "min"), (1, "s"))


def ago(moment: datetime, now: datetime | None = None) -> str:
    """'just now', '42 s ago', '3 min ago', '5 h ago', '2 days ago' (or 'in 3 min' ahead)."""
    seconds = int(((now or datetime.now(UTC)) - _aware(moment)).total_seconds())
    if abs(seconds) < 5:
        return "just now"
    for size, unit in _UNITS:
        if abs(seconds) >= size:
            count = abs(seconds) // size
            label = f"{count} {unit}{'s' if unit == 'day' and count != 1 else ''}"
            return f"{label} ago" if seconds > 0 else f"in {label}"
    return "just now"


def absolute(moment: datetime) -> str:
    return _aware(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def when(moment: datetime | None) -> Markup:
    """A <time> element: the relative time (app.js keeps it current), the absolute time beside it."""
    if moment is None:
        return Markup("—")
    iso = _aware(moment).astimezone(UTC).isoformat()
    return Markup('<time datetime="{}" data-relative>{}</time> <span class="muted when">{}</span>').format(
        escape(iso), escape(ago(moment)), escape(absolute(moment))
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


FILTERS = {"ago": ago, "absolute": absolute, "when": when}
