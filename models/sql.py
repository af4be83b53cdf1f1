"""Hand-written SQL on the DBAPI connection, for the few statements every sale runs.

SQLAlchemy's execution layer costs several times what SQLite spends on a statement (cache
keys, parameter processing, result wrapping), so the hot paths (token lookup, the limiter's
read, code issuance, payment, the Idempotency-Key record) send their SQL straight to the
driver. The schema, the migrations and every other query stay with SQLModel.

Statements are written once with ``?`` placeholders and rewritten to ``%s`` for psycopg and
to ``$1``, ``$2``… for asyncpg (the money path's pool, ``models.loop_pool``).
Values are stored exactly as SQLAlchemy's types store them, so either side reads what the
other wrote: on SQLite an aware UTC time is ``YYYY-MM-DD HH:MM:SS.ffffff`` text and JSON is
JSON text; PostgreSQL takes and gives ``timestamptz`` and ``json`` natively. JSON is written by
pydantic-core's compiled encoder (compact, UTF-8 kept as it is): any JSON reader, SQLAlchemy's
``json.loads`` included, reads back the same values as from ``json.dumps`` text.
Driver errors are raised as SQLAlchemy's exception classes, so the handlers that map them to
HTTP (409, 503, 422) and the Idempotency-Key retry see one kind of error whatever ran.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pydantic_core import to_json
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.util import await_only
from sqlmodel import Session

from models.awaited import AwaitedConnection

if TYPE_CHECKING:
    from models.pg_group import PgGroup

# How long a writer waits for another process to release SQLite's write lock.
WRITE_LOCK_TIMEOUT = 30.0

Params = Sequence[Any]


# Values bound in one statement by ``Tx.all_in``.
IN_CHUNK = 500


@lru_cache(maxsize=256)
def _pyformat(statement: str) -> str:
    # A plain replace is enough because these statements hold no literal "?" or "%".
    return statement.replace("?", "%s")


@lru_cache(maxsize=256)
def _numbered(statement: str) -> str:
    parts = statement.split("?")
    return "".join(f"{part}${at}" for at, part in enumerate(parts[:-1], 1)) + parts[-1]


class Tx:
    """Statements in one transaction on a DBAPI connection that someone else opened and will
    commit: a raw unit of work (:func:`unit`) or a SQLModel session (:meth:`of`)."""

    __slots__ = ("_cursor", "_dbapi_error", "_numbered", "group", "is_sqlite")

    def __init__(
        self,
        connection: Any,
        *,
        is_sqlite: bool,
        dbapi_error: type[Exception],
        numbered: bool = False,
        group: PgGroup | None = None,
    ):
        """``numbered``: the driver takes ``$1``-style placeholders and JSON as text
        (asyncpg). ``group``: where ``one_grouped`` sends its statement (an autocommit unit of
        PostgreSQL's money path)."""
        # One cursor for the whole unit: every read is fetched before the next statement.
        self._cursor = connection.cursor()
        self._dbapi_error = dbapi_error
        self._numbered = numbered
        self.group = group
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

    def _error(self, exc: Exception, statement: str, params: Any) -> DBAPIError:
        return DBAPIError.instance(statement, params, exc, self._dbapi_error)

    def _driver_sql(self, statement: str) -> str:
        if self.is_sqlite:
            return statement
        return _numbered(statement) if self._numbered else _pyformat(statement)

    def _run(self, statement: str, params: Params, many: bool = False) -> None:
        sql = self._driver_sql(statement)
        try:
            if many:
                self._cursor.executemany(sql, params)
            else:
                self._cursor.execute(sql, params)
        except self._dbapi_error as exc:
            raise self._error(exc, sql, params) from exc

    def _fetch(self, statement: str, fetch: Any) -> Any:
        # In a PostgreSQL pipeline a fetch is where an earlier queued statement's error shows.
        try:
            return fetch()
        except self._dbapi_error as exc:
            raise self._error(exc, statement, ()) from exc

    def one(self, statement: str, params: Params = ()) -> tuple[Any, ...] | None:
        """The first row, or None."""
        self._run(statement, params)
        return self._fetch(statement, self._cursor.fetchone)  # type: ignore[no-any-return]

    def one_grouped(
        self,
        statement: str,
        params: Params,
        *,
        accounts: Sequence[str | None],
        codes: Sequence[str | None] = (),
    ) -> tuple[Any, ...] | None:
        """``one`` for a statement that is a transaction of its own and answers one row,
        committed with the others waiting in the unit's group (``models.pg_group``) when it
        has one. ``accounts`` and ``codes``: the rows it locks."""
        if self.group is None:
            return self.one(statement, params)
        sql = self._driver_sql(statement)
        waiting = self.group.one(sql, params, accounts=accounts, codes=codes)
        try:
            row = await_only(waiting)
        except self._dbapi_error as exc:
            raise self._error(exc, sql, params) from exc
        return tuple(row) if row is not None else None

    def all(self, statement: str, params: Params = ()) -> list[tuple[Any, ...]]:
        self._run(statement, params)
        return self._fetch(statement, self._cursor.fetchall)  # type: ignore[no-any-return]

    def all_in(self, statement: str, values: Sequence[str]) -> list[tuple[Any, ...]]:
        """Every row of ``statement`` whose ``IN ({marks})`` holds the text ``values``.

        On SQLite, one placeholder per value, ``IN_CHUNK`` values at a time: SQLite bounds a
        statement's variables, and a few hundred per statement keep each one cheap to
        prepare. On PostgreSQL, one array: a statement of hundreds of placeholders cost the
        driver's parser more of the GIL than the server spent on it (docs/BENCHMARKS.md)."""
        if not self.is_sqlite:
            return self.all(statement.format(marks="SELECT unnest(?::text[])"), [list(values)])
        rows: list[tuple[Any, ...]] = []
        for at in range(0, len(values), IN_CHUNK):
            chunk = values[at : at + IN_CHUNK]
            rows += self.all(statement.format(marks=", ".join("?" for _ in chunk)), chunk)
        return rows

    def both(
        self, first: str, first_params: Params, second: str, second_params: Params
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Two reads run in order, in one round trip inside a PostgreSQL write unit (pipeline
        mode sends both before waiting): two row locks taken for the price of one wait."""
        if self.is_sqlite:
            return self.all(first, first_params), self.all(second, second_params)
        other = self._cursor.connection.cursor()
        try:
            self._run(first, first_params)
            try:
                other.execute(self._driver_sql(second), second_params)
            except self._dbapi_error as exc:
                raise self._error(exc, second, second_params) from exc
            rows = self._fetch(first, self._cursor.fetchall)
            return rows, self._fetch(second, other.fetchall)
        finally:
            other.close()

    def run(self, statement: str, params: Params = ()) -> None:
        """Run a write. In a PostgreSQL write unit it is only queued: its error, if any, shows
        at the next read or at commit."""
        self._run(statement, params)

    def run_many(self, statement: str, rows: Sequence[Params]) -> None:
        if rows:
            self._run(statement, rows, many=True)

    def commit(self) -> None:
        """Commit the connection's transaction. In a PostgreSQL pipeline this is where a
        queued write's error shows; either way a failure is raised as SQLAlchemy's."""
        self._fetch("COMMIT", self._cursor.connection.commit)

    def close(self) -> None:
        self._cursor.close()

    # Values, as SQLAlchemy's UTCDateTime and JSON types store them.

    def moment(self, value: datetime | None) -> Any:
        if value is None or not self.is_sqlite:
            return value
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    def json(self, value: Any) -> Any:
        if self.is_sqlite or self._numbered:
            return to_json(value).decode()
        from psycopg.types.json import Json

        return Json(value, dumps=to_json)

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


def _checkout(engine: Engine) -> tuple[Any, Any, type[Exception]]:
    """A pooled connection's proxy (to give back with ``close``), its driver connection and
    the driver's error class."""
    dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
    try:
        proxy = engine.raw_connection()
    except dbapi_error as exc:
        # The pool hands a refused connect through as the driver's own error; Engine.connect
        # would have raised SQLAlchemy's (the 503 handler's) class.
        raise DBAPIError.instance("connect", (), exc, dbapi_error) from exc
    if engine.dialect.is_async:
        # The loop's pool: each driver call awaited in the greenlet the unit runs in.
        return proxy, AwaitedConnection(proxy.driver_connection), dbapi_error
    return proxy, proxy.driver_connection, dbapi_error


def begin_immediate(connection: sqlite3.Connection) -> None:
    """Take the write lock, waiting for another process's transaction in steps of a fraction
    of a millisecond: SQLite's own busy handler sleeps 1, 2, 5, 10 ms… between tries, so a
    writer that meets a 1 ms transaction of another process (``paycode webhooks``, the CLI)
    sat idle for several milliseconds with the lock free. A failure is raised as SQLAlchemy
    raises a driver's error, whichever path began: the handlers that answer 503 see it."""
    deadline = time.monotonic() + WRITE_LOCK_TIMEOUT
    pause = 0.0001
    while True:
        try:
            connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.Error as exc:
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise DBAPIError.instance("BEGIN IMMEDIATE", (), exc, sqlite3.Error) from exc
        time.sleep(pause)
        pause = min(pause * 2, 0.0005)


def try_begin_immediate(connection: sqlite3.Connection) -> bool:
    """``begin_immediate`` without waiting: False while another connection holds the write
    lock (the connection has no busy handler); another failure is raised as there."""
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        if _is_busy(exc):
            return False
        raise DBAPIError.instance("BEGIN IMMEDIATE", (), exc, sqlite3.Error) from exc
    return True


def _is_busy(exc: sqlite3.Error) -> bool:
    # Another connection holds the lock: SQLITE_BUSY or one of its extended codes.
    return isinstance(exc, sqlite3.OperationalError) and (
        exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
    )


@contextmanager
def unit(engine: Engine, *, write: bool) -> Iterator[Tx]:
    """One transaction on a pooled connection: committed when the block ends, rolled back if
    it raises. On SQLite a write begins IMMEDIATE (the write lock first, as ``Database.write``
    does); reads run in autocommit, each statement its own snapshot.

    A PostgreSQL write runs in pipeline mode: writes are queued and go to the server with the
    next read or with the COMMIT, so the writes after the last read and the COMMIT take one
    round trip. That is what shortens the time a payment holds its payee's row lock."""
    is_sqlite = engine.dialect.name == "sqlite"
    proxy, connection, dbapi_error = _checkout(engine)
    try:
        with nullcontext() if is_sqlite or not write else connection.pipeline():
            tx = Tx(connection, is_sqlite=is_sqlite, dbapi_error=dbapi_error)
            try:
                if is_sqlite and write:
                    begin_immediate(connection)
                yield tx
                if write:
                    tx.commit()
            finally:
                tx.close()
    except BaseException as exc:
        # A broken connection cannot roll back; the pool finds it dead at the next checkout.
        with suppress(dbapi_error):
            connection.rollback()
        if isinstance(exc, dbapi_error):
            # Leaving a pipeline syncs it, which can raise a queued statement's error.
            raise DBAPIError.instance("COMMIT", (), exc, dbapi_error) from exc
        raise
    finally:
        # Back to the pool, which resets (rolls back) whatever a read left open.
        proxy.close()
