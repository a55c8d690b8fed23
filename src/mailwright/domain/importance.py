"""A message's importance: its own module, so that `mailwright send --help` needs no MIME code."""

from __future__ import annotations

from enum import StrEnum


class Importance(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
