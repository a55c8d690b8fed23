"""The group commit (storage/group.py): many writers' operations in shared transactions."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailwright.storage.db import Database
from mailwright.storage.tables import AccountKeyRow


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'group.db'}")
    database.migrate()
    yield database
    database.dispose()


def add_key(name: str) -> Callable[[Session], str]:
    def apply(session: Session) -> str:
        row = AccountKeyRow(name=name, name_key=name.casefold(), username="u", password_encrypted="x")
        session.add(row)
        session.flush()
        return row.id

    return apply


def count(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(AccountKeyRow)) or 0)


async def test_concurrent_writes_share_transactions_and_each_caller_gets_its_result(db: Database) -> None:
    group = db.group
    gate = threading.Event()
    # Hold the writer in a first operation so that the next ones pile up behind it.
    first = asyncio.ensure_future(group.write(lambda session: gate.wait(30)))
    await asyncio.sleep(0.05)
    writes = [asyncio.ensure_future(group.write(add_key(f"k{i}"))) for i in range(50)]
    await asyncio.sleep(0.05)
    gate.set()
    assert await first is True
    ids = await asyncio.gather(*writes)
    assert len(set(ids)) == 50 and count(db) == 50
    assert group.operations == 51 and group.transactions <= 3  # 50 writes, one commit or so


async def test_a_refused_fence_drops_only_its_operation(db: Database) -> None:
    class Refused(Exception):
        pass

    group = db.group
    gate = threading.Event()
    first = asyncio.ensure_future(group.write(lambda session: gate.wait(30)))
    await asyncio.sleep(0.05)
    kept = asyncio.ensure_future(group.write(add_key("kept")))
    refused = asyncio.ensure_future(group.write(add_key("refused"), fence=lambda session: Refused()))
    gate.set()
    await first
    assert await kept
    with pytest.raises(Refused):
        await refused
    assert count(db) == 1


async def test_a_failing_operation_fails_alone(db: Database) -> None:
    group = db.group
    gate = threading.Event()
    first = asyncio.ensure_future(group.write(lambda session: gate.wait(30)))
    await asyncio.sleep(0.05)
    good = [asyncio.ensure_future(group.write(add_key(f"g{i}"))) for i in range(3)]
    duplicate = asyncio.ensure_future(group.write(add_key("g0")))  # the name is taken
    gate.set()
    await first
    assert len(set(await asyncio.gather(*good))) == 3
    with pytest.raises(Exception, match=r"(?i)unique"):
        await duplicate
    assert count(db) == 3


def test_threads_write_through_it_too(db: Database) -> None:
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(db.group.write_sync(add_key(f"t{i}"))))
        for i in range(10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 10 and count(db) == 10
