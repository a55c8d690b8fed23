"""The audit log: who created, changed or deleted which target, account key, workflow, trigger
or token, when, and from which face (api, web, cli).

Who is acting is set once per request or command by its face (`act_as`: the API's role
dependencies, the web's role dependencies, the CLI's root callback) and read here, so a
service records its change with `record(session, ...)` in the transaction of the change
itself: the entry and the change are committed together or not at all.

An entry names the fields a change touched, never their values: a new password shows as
the field name `password`, nothing more.
"""

from __future__ import annotations

import getpass
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailwright.errors import ValidationError
from mailwright.storage.db import Database
from mailwright.storage.tables import AuditEntryRow

MAX_LIMIT = 10_000


class Face(StrEnum):
    API = "api"
    WEB = "web"
    CLI = "cli"
    SYSTEM = "system"  # the service itself (e.g. the first-start admin token), or Python code


class ActorType(StrEnum):
    TOKEN = "token"  # an API token, by name (over the API, or signed in to the web with it)
    USER = "user"  # the web admin, signed in with the admin password
    LOCAL = "local"  # a CLI user on this machine, by operating-system user name
    SYSTEM = "system"


class AuditAction(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    REVOKE = "revoke"


class ObjectType(StrEnum):
    TARGET = "target"
    ACCOUNT_KEY = "account_key"
    WORKFLOW = "workflow"
    TRIGGER = "trigger"
    TOKEN = "token"


@dataclass(frozen=True, slots=True)
class Actor:
    face: Face
    type: ActorType
    name: str

    @classmethod
    def local_user(cls) -> Actor:
        """Whoever runs the CLI on this machine."""
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # no user name for the uid (some containers)
            name = "unknown"
        return cls(face=Face.CLI, type=ActorType.LOCAL, name=name)


SYSTEM = Actor(face=Face.SYSTEM, type=ActorType.SYSTEM, name="mailwright")

_actor: ContextVar[Actor] = ContextVar("mailwright_actor", default=SYSTEM)


def act_as(actor: Actor) -> None:
    """Who is acting from here on, in this request's (or command's) context."""
    _actor.set(actor)


def current_actor() -> Actor:
    return _actor.get()


def record(
    session: Session,
    *,
    action: AuditAction,
    object_type: ObjectType,
    object_id: str,
    object_name: str,
    fields: list[str] | None = None,
) -> None:
    """Add an entry to the caller's transaction, by the current actor."""
    actor = current_actor()
    session.add(
        AuditEntryRow(
            face=actor.face.value,
            actor_type=actor.type.value,
            actor=actor.name[:200],
            action=action.value,
            object_type=object_type.value,
            object_id=object_id,
            object_name=object_name[:300],
            fields=sorted(set(fields or [])),
        )
    )


def changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The names of the fields whose values differ (the values themselves are not kept)."""
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


class AuditEntry(BaseModel):
    id: str
    at: datetime
    face: str
    actor_type: str
    actor: str
    action: str
    object_type: str
    object_id: str
    object_name: str
    fields: list[str]

    def who(self) -> str:
        """'token deploy-bot', 'user admin', 'local alice'."""
        return f"{self.actor_type} {self.actor}"

    def summary(self) -> str:
        """'update target 'Relay' (port, security)'."""
        what = f"{self.action} {self.object_type.replace('_', ' ')} {self.object_name!r}"
        return what + (f" ({', '.join(self.fields)})" if self.fields else "")


class AuditService:
    def __init__(self, db: Database) -> None:
        self._db = db

    def list_recent(self, limit: int = 100) -> list[AuditEntry]:
        """The newest entries first."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValidationError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}", field="limit")
        with self._db.session() as session:
            rows = session.scalars(
                select(AuditEntryRow).order_by(AuditEntryRow.at.desc(), AuditEntryRow.id).limit(limit)
            ).all()
            return [_public(row) for row in rows]


def _public(row: AuditEntryRow) -> AuditEntry:
    values: dict[str, Any] = {c: getattr(row, c) for c in AuditEntry.model_fields}
    return AuditEntry.model_validate(values)
