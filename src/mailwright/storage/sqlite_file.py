"""The embedded SQLite database's file: its schema revision, its privacy, and reads without SQLAlchemy.

Importing SQLAlchemy and mapping the tables costs a short command such as
`mailwright targets list` more than all else it does (bench/startup.py). The
embedded database answers that command's one query through the standard library's
`sqlite3` in a millisecond, so `read_targets` does, for a database file already at the
current schema revision. Anything else (PostgreSQL, an older schema that must be
migrated first, no database yet) gets None, and the caller takes the usual path.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

log = logging.getLogger("mailwright.storage.db")

# The newest migration in storage/migrations/versions (a test keeps the two equal).
SCHEMA_REVISION = "0014"


def private_database_file(path: Path) -> None:
    """Create the SQLite file with mode 0600 before SQLite does (it would take the umask).

    SQLite gives the -wal and -shm files the database file's mode, so they are private
    too. An existing database readable by the group or others is not changed, but warned about.
    """
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            try:
                mode = candidate.stat().st_mode & 0o777
            except OSError:
                continue
            if mode & 0o077:
                log.warning(
                    "the database file %s is readable by others (mode %o): it holds encrypted passwords, "
                    "tokens' hashes and every run's data; run chmod 600 on it",
                    candidate,
                    mode,
                )
    except OSError:
        return  # a missing directory or a read-only place: SQLite reports it better
    else:
        os.close(descriptor)


def sqlite_file(url: str) -> Path | None:
    """The file of a plain `sqlite:///PATH` URL (the embedded default), else None."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            rest = unquote(url[len(prefix) :])
            if not rest or "?" in rest or rest.startswith(("file:", ":memory:")):
                return None
            return Path(rest)
    return None


@dataclass(frozen=True, slots=True)
class TargetRecord:
    """A `targets` row as the ORM's TargetRow reads it, with its account key's name."""

    id: str
    display_name: str
    description: str
    type: str
    settings: dict[str, Any]
    no_account_keys: bool
    account_key_id: str | None
    account_key_name: str | None
    last_test_ok: bool | None
    last_test_at: datetime | None
    last_test_summary: str | None
    created_at: datetime
    updated_at: datetime


_TARGETS = """
SELECT t.id, t.display_name, t.description, t.type, t.settings, t.no_account_keys, t.account_key_id,
       k.name, t.last_test_ok, t.last_test_at, t.last_test_summary, t.created_at, t.updated_at
FROM targets AS t LEFT JOIN account_keys AS k ON k.id = t.account_key_id
ORDER BY t.name_key
"""


def read_targets(path: Path) -> list[TargetRecord] | None:
    """Every target, ordered as the ORM lists them; None when this file cannot answer (see above)."""
    if not path.is_file():
        return None
    private_database_file(path)  # the same warning as when the engine opens it
    try:
        with _connect(path) as connection:
            if _revision(connection) != SCHEMA_REVISION:
                return None
            rows = connection.execute(_TARGETS).fetchall()
    except sqlite3.Error:
        return None  # locked, damaged, not a database: the usual path says what is wrong
    return [_target(row) for row in rows]


class _connect:
    """A read-only connection, closed on exit (sqlite3's own context manager only commits)."""

    def __init__(self, path: Path) -> None:
        self._connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)

    def __enter__(self) -> sqlite3.Connection:
        return self._connection

    def __exit__(self, *exc: object) -> None:
        self._connection.close()


def _revision(connection: sqlite3.Connection) -> str | None:
    try:
        found = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None
    return str(found[0]) if found else None


def _target(row: tuple[Any, ...]) -> TargetRecord:
    return TargetRecord(
        id=row[0],
        display_name=row[1],
        description=row[2],
        type=row[3],
        settings=json.loads(row[4]) if row[4] else {},
        no_account_keys=bool(row[5]),
        account_key_id=row[6],
        account_key_name=row[7],
        last_test_ok=None if row[8] is None else bool(row[8]),
        last_test_at=_when(row[9]),
        last_test_summary=row[10],
        created_at=_utc(row[11]),
        updated_at=_utc(row[12]),
    )


def _when(value: str | None) -> datetime | None:
    return None if value is None else _utc(value)


def _utc(value: str) -> datetime:
    """A timestamp as SQLAlchemy stores it in SQLite ("2026-12-03 16:40:54.544354"), aware in UTC."""
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
