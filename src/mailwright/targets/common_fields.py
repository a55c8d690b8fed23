"""Settings that several target types have, declared once: the same bounds, labels and CLI shortcut.

Each is a Pydantic `Field` for a type's settings model; the description may differ (what
one "command" is differs by protocol), the rest is shared so that the merged CLI option
(`--connect-timeout`, and `--timeout` for both) and the form field mean one thing.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field


def connect_timeout(description: str = "seconds to connect") -> Any:
    return Field(
        default=10.0,
        gt=0,
        le=300,
        description=description,
        json_schema_extra={"label": "Connect timeout (seconds)", "group": "advanced", "shortcut": "timeout"},
    )


def command_timeout(description: str = "seconds for each command") -> Any:
    return Field(
        default=60.0,
        gt=0,
        le=3600,
        description=description,
        json_schema_extra={"label": "Command timeout (seconds)", "group": "advanced", "shortcut": "timeout"},
    )


def polling_interval(help_text: str) -> Any:
    return Field(
        default=30.0,
        ge=5,
        le=86_400,
        description="seconds between polls of a mail trigger",
        json_schema_extra={"label": "Polling interval (seconds)", "help": help_text},
    )


POOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


def _pool_name(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str) and not re.fullmatch(POOL_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a pool name: use letters, digits, '.', '_' and '-', starting with a "
            "letter or digit, at most 63 characters"
        )
    return value


# A pool's name; blank (in an update: `--worker-pool ""`) takes the target out of its pool.
PoolName = Annotated[str | None, BeforeValidator(_pool_name)]


def pool_row(pool: str | None) -> tuple[str, str]:
    """The line a target's page shows for its worker pool."""
    return ("Worker pool", f"{pool} (only workers started with --pool {pool})" if pool else "(any worker)")


def worker_pool() -> Any:
    """The worker pool whose workers alone run this target's steps (an on-premises relay's network)."""
    return Field(
        default=None,
        description="only workers started with `--pool NAME` run this target's steps (default: any "
        "worker started without a pool)",
        json_schema_extra={
            "label": "Worker pool",
            "help": "For a server only some machines reach (an internal relay): only workers started "
            "in this pool run its steps. Blank: any worker without a pool.",
            "group": "advanced",
            "blank_clears": True,
        },
    )
