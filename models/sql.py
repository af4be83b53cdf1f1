"""Hand-written SQL on the DBAPI connection, for the few statements every sale runs.

SQLAlchemy's execution layer costs several times what SQLite spends on a statement (cache
keys, parameter processing, result wrapping), so the hot paths (token lookup, the limiter's
read, code issuance, payment, the Idempotency-Key record) send their SQL straight to the
driver. The schema, the migrations and every other query stay with SQLModel.

Statements are written once with ``?`` placeholders and rewritten to ``%s`` for psycopg.
Values are stored exactly as SQLAlchemy's types store them, so either side reads what the
other wrote: on SQLite an aware UTC time is ``YYYY-MM-DD HH:MM:SS.ffffff`` text and JSON is
``json.dumps`` text; PostgreSQL takes and gives ``timestamptz`` and ``json`` natively.
Driver errors are raised as SQLAlchemy's exception classes, so the handlers that map them to
HTTP (409, 503, 422) and the Idempotency-Key retry see one kind of error whatever ran.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

Params = Sequence[Any]


@lru_cache(maxsize=256)
def _pyformat(statement: str) -> str:
    return statement.replace("?", "%s")


class Tx:
    """Statements in one transaction on a DBAPI connection that someone else opened and will
    commit: a raw unit of work (:func:`unit`) or a SQLModel session (:meth:`of`)."""

    __slots__ = ("_connection", "_dbapi_error", "is_sqlite")

    def __init__(self, connection: Any, *, is_sqlite: bool, dbapi_error: type[Exception]):
        self._connection = connection
        self._dbapi_error = dbapi_error
        self.is_sqlite = is_sqlite

    @classmethod
    def of(cls, session: Session) -> Tx:
        """The session's own transaction (begun if it was not), for callers that hold one."""
        connection = session.connection()
        dialect = connection.dialect
        return cls(
            connection.connection.driver_connection,
            is_sqlite=dialect.name == "sqlite",
            dbapi_error=dialect.loaded_dbapi.Error,
        )

    def _run(self, statement: str, params: Params, many: bool = False) -> Any:
        sql = statement if self.is_sqlite else _pyformat(statement)
        cursor = self._connection.cursor()
        try:
            if many:
                cursor.executemany(sql, params)
            else:
                cursor.execute(sql, params)
        except self._dbapi_error as exc:
            cursor.close()
            raise DBAPIError.instance(sql, params, exc, self._dbapi_error) from exc
        return cursor

    def one(self, statement: str, params: Params = ()) -> tuple[Any, ...] | None:
        """The first row, or None."""
        cursor = self._run(statement, params)
        try:
            return cursor.fetchone()  # type: ignore[no-any-return]
        finally:
            cursor.close()

    def all(self, statement: str, params: Params = ()) -> list[tuple[Any, ...]]:
        cursor = self._run(statement, params)
        try:
            return cursor.fetchall()  # type: ignore[no-any-return]
        finally:
            cursor.close()

    def run(self, statement: str, params: Params = ()) -> int:
        """Run a write; the number of rows it changed."""
        cursor = self._run(statement, params)
        count = int(cursor.rowcount)
        cursor.close()
        return count

    def run_many(self, statement: str, rows: Sequence[Params]) -> None:
        if rows:
            self._run(statement, rows, many=True).close()

    # Values, as SQLAlchemy's UTCDateTime and JSON types store them.

    def moment(self, value: datetime | None) -> Any:
        if value is None or not self.is_sqlite:
            return value
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    def json(self, value: Any) -> Any:
        if self.is_sqlite:
            return json.dumps(value)
        from psycopg.types.json import Json

        return Json(value)

    def read_moment(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]

    def read_json(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, (str, bytes)) else value


def tx(work: Session | Tx) -> Tx:
    """The transaction of either kind of unit of work a caller holds."""
    return work if isinstance(work, Tx) else Tx.of(work)


@contextmanager
def unit(engine: Engine, *, write: bool) -> Iterator[Tx]:
    """One transaction on a pooled connection: committed when the block ends, rolled back if
    it raises. On SQLite a write begins IMMEDIATE (the write lock first, as ``Database.write``
    does); reads run in autocommit, each statement its own snapshot."""
    is_sqlite = engine.dialect.name == "sqlite"
    dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
    proxy = engine.raw_connection()
    connection = proxy.driver_connection
    tx = Tx(connection, is_sqlite=is_sqlite, dbapi_error=dbapi_error)
    try:
        if is_sqlite and write:
            tx.run("BEGIN IMMEDIATE")
        yield tx
        if write:
            try:
                connection.commit()
            except dbapi_error as exc:
                raise DBAPIError.instance("COMMIT", (), exc, dbapi_error) from exc
    except BaseException:
        # A broken connection cannot roll back; the pool finds it dead at the next checkout.
        with suppress(dbapi_error):
            connection.rollback()
        raise
    finally:
        # Back to the pool, which resets (rolls back) whatever a read left open.
        proxy.close()
