"""The database handle: engine, sessions, and migrations run at start."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from mailwright.errors import ConfigError
from mailwright.storage import jsontext
from mailwright.storage.group import GroupCommit
from mailwright.storage.sqlite_file import SCHEMA_REVISION, private_database_file

__all__ = ["SCHEMA_REVISION", "Database", "make_engine", "private_database_file"]

log = logging.getLogger(__name__)

IDLE_IN_TRANSACTION_SECONDS = 10  # PostgreSQL ends a transaction left idle this long


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Foreign keys protect keys in use; WAL lets the API read while a send writes.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _postgresql_settings(dbapi_connection: Any, _record: Any) -> None:
    # Our transactions are short. One left open by a frozen process (SIGSTOP, a VM pause) would
    # hold its rows' locks until it woke; ended after this, its process finds the transaction
    # gone (and its lease fenced) when it wakes.
    with dbapi_connection.cursor() as cursor:
        cursor.execute(f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_SECONDS}s'")
    dbapi_connection.commit()


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    sqlite_file = url.startswith("sqlite") and ":memory:" not in url and url.rstrip("/") != "sqlite:"
    # A SQLite file's connection cannot drop, so it needs no ping; and under concurrency a pool
    # too small for the threads that share it closes and reopens connections (each open runs
    # the pragmas below) on every request.
    pooling: dict[str, Any] = (
        {"pool_size": 32, "max_overflow": 32} if sqlite_file else {"pool_pre_ping": True}
    )
    try:
        engine = create_engine(
            url, json_serializer=jsontext.dumps, json_deserializer=jsontext.loads, **pooling
        )
    except (ArgumentError, ImportError) as exc:
        raise ConfigError(
            f"cannot use the database URL: {exc}",
            hint="use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB",
        ) from exc
    if engine.dialect.name == "sqlite":
        if sqlite_file and engine.url.database and not engine.url.database.startswith("file:"):
            private_database_file(Path(engine.url.database))
        event.listen(engine, "connect", _sqlite_pragmas)
    elif engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _postgresql_settings)
    return engine


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._group: GroupCommit | None = None

    @property
    def group(self) -> GroupCommit:
        """The group commit of this database's small concurrent writes (started when first used)."""
        if self._group is None:
            self._group = GroupCommit(self)
        return self._group

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def schema_revision(self) -> str | None:
        try:
            with self.engine.connect() as connection:
                return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:
            return None

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""
        # The common case, an up-to-date database, costs one query and no Alembic import.
        if self.schema_revision() == SCHEMA_REVISION:
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        script_location = resources.files("mailwright.storage").joinpath("migrations")
        config.set_main_option("script_location", str(script_location))
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except DBAPIError as exc:
            raise ConfigError(
                f"cannot reach the database: {exc.orig}",
                hint="check MAILWRIGHT_DATABASE_URL and that the database server is running",
            ) from None

    def dispose(self) -> None:
        if self._group is not None:
            self._group.close()
        self.engine.dispose()
