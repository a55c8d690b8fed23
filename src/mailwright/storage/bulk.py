"""Many rows at once, straight on the DB-API cursor: the hot path of batches.

A batch writes every one of its messages as a step row, marks it sending and
records its result: 60,000 row writes for 20,000 messages. Through the ORM a row
costs about 30 µs and through SQLAlchemy Core's executemany about 10; here the
statement is written once per dialect and each row is a plain tuple that goes
to `cursor.executemany`. Values still pass through the columns' own bind
processors (JSON as text, SQLite's datetime format), and read values through
their result processors, so the ORM reads these rows exactly as if it had
written them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import JSON, Column, Connection, Dialect, Table

Processor = Callable[[Any], Any]


class JSONText(str):
    """A JSON value already written as text (e.g. a validated line of a JSONL file).

    A JSON column takes it as it is on SQLite, where JSON is stored as text, and
    spares encoding it again; other databases get it parsed and encoded as usual.
    """


def _json_aware(process: Processor, dialect: Dialect) -> Processor:
    if dialect.name == "sqlite":
        return lambda value: value if isinstance(value, JSONText) else process(value)
    return lambda value: process(json.loads(value)) if isinstance(value, JSONText) else process(value)


class BulkStatement:
    """One SQL statement whose `?` placeholders take the values of `columns`, in order."""

    def __init__(self, dialect: Dialect, sql: str, columns: Sequence[Column[Any]]) -> None:
        placeholder = "?" if dialect.paramstyle == "qmark" else "%s"
        self.sql = sql.replace("?", placeholder)
        self.width = len(columns)
        processors = [c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
        self._processors = [
            (i, _json_aware(p, dialect) if isinstance(c.type, JSON) else p)
            for i, (c, p) in enumerate(zip(columns, processors, strict=True))
            if p is not None
        ]

    def params(self, values: Sequence[Any]) -> tuple[Any, ...]:
        if not self._processors:
            return tuple(values)
        row = list(values)
        for index, process in self._processors:
            if row[index] is not None:
                row[index] = process(row[index])
        return tuple(row)

    def execute_many(self, connection: Connection, rows: Iterable[Sequence[Any]]) -> None:
        batch = [self.params(row) for row in rows]
        if batch:
            connection.exec_driver_sql(self.sql, batch)

    def execute(self, connection: Connection, values: Sequence[Any]) -> None:
        connection.exec_driver_sql(self.sql, self.params(values))


# SQLite binds at most 32,766 parameters to one statement.
_SQLITE_PARAMETERS = 32_000


class BulkWrite:
    """INSERT or UPDATE of many rows, as few statements as the database allows.

    SQLite gets one multi-row statement per group (`INSERT … VALUES (…), (…)` or
    `UPDATE … FROM (VALUES …)`): one call into SQLite for the whole group. That
    matters beyond the call count: `executemany` takes the GIL back after every
    row, and in a writer thread beside a busy event loop each of those waits up
    to a switch interval, so 500 rows took seconds. Other databases get
    `executemany`, which their drivers pipeline.
    """

    def __init__(self, dialect: Dialect, statement: BulkStatement, multirow: Callable[[int], str]) -> None:
        self._statement = statement
        self._multirow = multirow if dialect.name == "sqlite" else None
        self._width = statement.width
        self._sql: dict[int, str] = {}

    @classmethod
    def insert(cls, dialect: Dialect, table: Table, columns: Sequence[str]) -> BulkWrite:
        names = ", ".join(columns)
        row = "(" + ", ".join("?" for _ in columns) + ")"
        # Table and column names are this program's constants; every value is a parameter.
        head = f"INSERT INTO {table.name} ({names}) VALUES "  # noqa: S608
        statement = BulkStatement(dialect, head + row, columns_of(table, columns))
        return cls(dialect, statement, lambda n: head + ", ".join([row] * n))

    @classmethod
    def update(
        cls, dialect: Dialect, table: Table, *, constants: str, columns: Sequence[str], key: str
    ) -> BulkWrite:
        """`UPDATE table SET constants, column = ? … WHERE key = ?`: a row's values, its key last."""
        assigned = ", ".join(f"{name} = ?" for name in columns)
        single = f"UPDATE {table.name} SET {constants}, {assigned} WHERE {key} = ?"  # noqa: S608
        statement = BulkStatement(dialect, single, columns_of(table, [*columns, key]))
        from_values = ", ".join(f"{name} = v.column{i}" for i, name in enumerate(columns, start=1))
        row = "(" + ", ".join("?" for _ in range(len(columns) + 1)) + ")"

        def multirow(n: int) -> str:
            return (
                f"UPDATE {table.name} SET {constants}, {from_values} "  # noqa: S608
                f"FROM (VALUES {', '.join([row] * n)}) AS v "
                f"WHERE {table.name}.{key} = v.column{len(columns) + 1}"
            )

        return cls(dialect, statement, multirow)

    def execute_many(self, connection: Connection, rows: Sequence[Sequence[Any]]) -> None:
        if self._multirow is None:
            self._statement.execute_many(connection, rows)
            return
        start = 0
        for size in _powers_of_two(len(rows), most=_SQLITE_PARAMETERS // self._width):
            chunk = rows[start : start + size]
            start += size
            params = [value for row in chunk for value in self._statement.params(row)]
            connection.exec_driver_sql(self._sql_for(size), tuple(params))

    def _sql_for(self, rows: int) -> str:
        # Only powers of two: SQLite caches every prepared statement per connection, and
        # one for each group size seen would hold megabytes for the life of the process.
        sql = self._sql.get(rows)
        if sql is None:
            assert self._multirow is not None
            sql = self._sql[rows] = self._multirow(rows)
        return sql


def _powers_of_two(total: int, *, most: int) -> list[int]:
    """`total` as a sum of powers of two, the largest first, none above `most`."""
    top = 1 << (max(1, most).bit_length() - 1)
    sizes = [top] * (total // top)
    rest = total % top
    sizes.extend(1 << bit for bit in reversed(range(rest.bit_length())) if rest >> bit & 1)
    return sizes


class BulkSelect:
    """A SELECT whose `?` placeholders are parameters; each row's values come back processed
    as the values of `columns` (the result processors of those columns, in order)."""

    def __init__(self, dialect: Dialect, sql: str, columns: Sequence[Column[Any]]) -> None:
        placeholder = "?" if dialect.paramstyle == "qmark" else "%s"
        self.sql = sql.replace("?", placeholder)
        processors = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]
        self._processors = [(i, p) for i, p in enumerate(processors) if p is not None]

    def rows(self, connection: Connection, params: Sequence[Any]) -> list[list[Any]]:
        rows = [list(row) for row in connection.exec_driver_sql(self.sql, tuple(params)).fetchall()]
        for index, process in self._processors:
            for row in rows:
                if row[index] is not None:
                    row[index] = process(row[index])
        return rows


def columns_of(table: Table, names: Iterable[str]) -> list[Column[Any]]:
    return [table.c[name] for name in names]
