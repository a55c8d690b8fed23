"""A target as the faces show it, built from its stored fields.

Apart from services/targets.py so that a command that only lists targets (read from the
embedded database without SQLAlchemy: storage/sqlite_file.py) imports no ORM.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from mailwright.plugins import TargetView, target_type, target_types


class LastTest(BaseModel):
    ok: bool
    at: datetime
    summary: str


@functools.cache
def _known_settings(types: tuple[str, ...]) -> frozenset[str]:
    return frozenset(name for t in target_types() for name in t.settings_model.model_fields)


class TargetPublic(BaseModel):
    """A target as the faces show it; the settings of its type come flattened, as further fields."""

    model_config = ConfigDict(extra="allow")

    id: str
    display_name: str
    description: str
    type: str
    type_label: str
    protocol: str
    no_account_keys: bool
    account_key: str | None
    account_key_id: str | None
    last_test: LastTest | None
    created_at: datetime
    updated_at: datetime

    def __getattr__(self, name: str) -> Any:
        # A setting of another type reads as None (an IMAP target's rate_per_day), as it did
        # when every setting was a field; any other unknown name is an error.
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            if name in _known_settings(tuple(t.name for t in target_types())):
                return None
            raise

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def view(self) -> TargetView:
        """The lines the CLI and the web show for this target's settings (its type decides)."""
        kind = target_type(self.type)
        return kind.describe(
            kind.settings_model.model_validate(self.settings),
            target_name=self.display_name,
            account_key=self.account_key,
        )


class StoredTarget(Protocol):
    """A target's stored fields: the ORM's row, or the standard library's read of it."""

    @property
    def id(self) -> str: ...
    @property
    def display_name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def settings(self) -> dict[str, Any]: ...
    @property
    def no_account_keys(self) -> bool: ...
    @property
    def account_key_id(self) -> str | None: ...
    @property
    def last_test_ok(self) -> bool | None: ...
    @property
    def last_test_at(self) -> datetime | None: ...
    @property
    def last_test_summary(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...


def public_target(row: StoredTarget, *, account_key_name: str | None) -> TargetPublic:
    kind = target_type(row.type)
    settings = kind.settings_model.model_validate(row.settings)
    last = None
    if row.last_test_at is not None and row.last_test_ok is not None:
        last = LastTest(ok=row.last_test_ok, at=row.last_test_at, summary=row.last_test_summary or "")
    return TargetPublic(
        id=row.id,
        display_name=row.display_name,
        description=row.description,
        type=kind.name,
        type_label=kind.label,
        protocol=kind.protocol,
        **settings.model_dump(),  # the type's settings, as further fields
        no_account_keys=row.no_account_keys,
        account_key=account_key_name,
        account_key_id=row.account_key_id,
        last_test=last,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
