"""The services the commands use, opened once per invocation."""

from __future__ import annotations

from functools import cache

from mailwright.config import Settings
from mailwright.services.app import Services


@cache
def services() -> Services:
    return Services(Settings())
