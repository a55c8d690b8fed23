"""storage/bulk.py: many rows per statement on SQLite, with the columns' own processors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwright.storage.bulk import BulkSelect, BulkWrite, JSONText, _powers_of_two, columns_of
from mailwright.storage.tables import UTCDateTime


@given(total=st.integers(0, 100_000), most=st.integers(1, 40_000))
def test_group_sizes_are_few_powers_of_two_that_add_up(total: int, most: int) -> None:
    sizes = _powers_of_two(total, most=most)
    assert sum(sizes) == total
    assert all(size & (size - 1) == 0 and size <= most for size in sizes)
    assert sizes == sorted(sizes, reverse=True)
    assert len(set(sizes)) <= most.bit_length()  # so SQLite caches only a few statements


def _table() -> tuple[sa.Engine, sa.Table]:
    engine = sa.create_engine("sqlite://")
    table = sa.Table(
        "things",
        sa.MetaData(),
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("doc", sa.JSON),
        sa.Column("at", UTCDateTime()),
        sa.Column("n", sa.Integer),
    )
    table.metadata.create_all(engine)
    return engine, table


@settings(max_examples=25, deadline=None)
@given(count=st.integers(0, 1_300))
def test_rows_written_in_groups_read_back_as_the_orm_wrote_them(count: int) -> None:
    engine, table = _table()
    start = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    insert = BulkWrite.insert(engine.dialect, table, ("id", "doc", "at", "n"))
    update = BulkWrite.update(engine.dialect, table, constants="n = n + 1", columns=("doc",), key="id")
    rows = [
        (f"k{i}", JSONText(f'{{"i": {i}}}') if i % 2 else {"i": i, "é": [1]}, start + timedelta(seconds=i), 0)
        for i in range(count)
    ]
    with engine.begin() as connection:
        insert.execute_many(connection, rows)
        update.execute_many(connection, [({"done": i}, f"k{i}") for i in range(0, count, 3)])
    with engine.connect() as connection:
        read = {r.id: r for r in connection.execute(sa.select(table))}
        columns = columns_of(table, ("id", "doc", "at"))
        select = BulkSelect(engine.dialect, f"SELECT id, doc, at FROM {table.name} WHERE n = ?", columns)
        fetched = select.rows(connection, (1,))
    assert len(read) == count
    for i in range(count):
        row = read[f"k{i}"]
        assert row.doc == ({"done": i} if i % 3 == 0 else ({"i": i} if i % 2 else {"i": i, "é": [1]}))
        assert row.at == start + timedelta(seconds=i) and row.n == (1 if i % 3 == 0 else 0)
    assert sorted(r[0] for r in fetched) == sorted(f"k{i}" for i in range(0, count, 3))
    assert all(isinstance(r[1], dict) and r[2].tzinfo is not None for r in fetched)
