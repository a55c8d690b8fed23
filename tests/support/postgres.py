"""A fresh PostgreSQL database for a test or a benchmark, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import make_url

# Created by scripts/install-system-deps.sh (make test); override to use another server.
ADMIN_URL = os.environ.get(
    "MAILWRIGHT_TEST_POSTGRES_URL", "postgresql+psycopg://mailwright:mailwright@127.0.0.1:5432/postgres"
)


@contextmanager
def fresh_database(admin_url: str = ADMIN_URL, *, prefix: str = "mw_test") -> Iterator[str]:
    """The URL of a new, empty database on `admin_url`'s server; dropped (even if in use) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
