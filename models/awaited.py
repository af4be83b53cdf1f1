"""Asynchronous drivers' connections with the blocking DBAPI face that :class:`models.sql.Tx`
drives, for code that runs in a greenlet of the event loop (``app.http.on_loop``): psycopg's
asyncio mode, and asyncpg for the money path.

Each call awaits the driver's coroutine through SQLAlchemy's ``await_only``: the greenlet
yields to the loop while the database works, so the hot paths' units keep their one
blocking-style body for every pool. For psycopg, SQLAlchemy's own adapter of the same
connection serves its pool (connect, reset on return); this one adds what ``Tx`` needs that
the adapter lacks: pipeline mode, and rows fetched as the driver returns them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import asyncpg
from sqlalchemy.util import await_only


class AwaitedCursor:
    __slots__ = ("_cursor", "connection")

    def __init__(self, cursor: Any, connection: AwaitedConnection) -> None:
        self._cursor = cursor
        self.connection = connection

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        await_only(self._cursor.execute(statement, params))

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        await_only(self._cursor.executemany(statement, rows))

    def fetchone(self) -> tuple[Any, ...] | None:
        return await_only(self._cursor.fetchone())  # type: ignore[no-any-return]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return await_only(self._cursor.fetchall())  # type: ignore[no-any-return]

    def close(self) -> None:
        await_only(self._cursor.close())


class AwaitedConnection:
    __slots__ = ("_connection",)

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def cursor(self) -> AwaitedCursor:
        return AwaitedCursor(self._connection.cursor(), self)

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        manager = self._connection.pipeline()
        await_only(manager.__aenter__())
        try:
            yield
        except BaseException as exc:
            if not await_only(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            await_only(manager.__aexit__(None, None, None))

    def commit(self) -> None:
        await_only(self._connection.commit())

    def rollback(self) -> None:
        await_only(self._connection.rollback())


# --- asyncpg ----------------------------------------------------------------------------------
#
# The money path's connections (``models.loop_pool``): asyncpg does a round trip for less
# than half the CPU psycopg's asyncio mode spends on one. Its errors are translated to classes
# named as PEP 249 names them, so ``Tx`` raises them as SQLAlchemy's (``DBAPIError.instance``
# goes by the class name): the handlers that answer 409, 422 and 503 see one kind of error.


class Error(Exception):
    """An asyncpg failure in PEP 249's terms; its ``__cause__`` is asyncpg's own exception."""


class InterfaceError(Error):
    pass


class DatabaseError(Error):
    pass


class DataError(DatabaseError):
    pass


class OperationalError(DatabaseError):
    pass


class IntegrityError(DatabaseError):
    pass


class InternalError(DatabaseError):
    pass


class ProgrammingError(DatabaseError):
    pass


# SQLSTATE classes (the first two characters), as psycopg sorts them.
_BY_CLASS: dict[str, type[Error]] = {
    "08": OperationalError,  # connection exception
    "22": DataError,
    "23": IntegrityError,
    "40": OperationalError,  # serialization failure, deadlock
    "42": ProgrammingError,
    "53": OperationalError,  # insufficient resources (too many connections)
    "57": OperationalError,  # operator intervention (shutdown, a terminated backend)
    "58": OperationalError,  # system error
}


def translated(exc: BaseException) -> Error:
    """asyncpg's exception as a PEP 249 one: by SQLSTATE for the server's errors; a lost
    connection (the socket's error, or a protocol left mid-exchange by a server that closed
    it) is operational."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        kind = _BY_CLASS.get(sqlstate[:2], InternalError)
    elif isinstance(exc, (OSError, asyncpg.InternalClientError)):
        kind = OperationalError
    elif isinstance(exc, asyncpg.exceptions.InterfaceError):
        kind = InterfaceError
    else:
        kind = InternalError
    error = kind(str(exc))
    error.__cause__ = exc
    return error


# What asyncpg raises for a statement: the server's errors, its own, and the socket's. A
# server that shuts down sends its FATAL message and then closes: a statement sent between
# the two finds the protocol still consuming the message (InternalClientError).
RAISED = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


class AsyncpgCursor:
    """A DBAPI cursor's face on an asyncpg connection: each statement fetches its rows at
    once (one round trip), and they are handed out as tuples."""

    __slots__ = ("_rows", "connection")

    def __init__(self, connection: AsyncpgConnection) -> None:
        self.connection = connection
        self._rows: list[Any] = []

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        try:
            self._rows = await_only(self.connection.driver.fetch(statement, *params))
        except RAISED as exc:
            raise translated(exc) from exc

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            await_only(self.connection.driver.executemany(statement, rows))
        except RAISED as exc:
            raise translated(exc) from exc
        self._rows = []

    def fetchone(self) -> tuple[Any, ...] | None:
        return tuple(self._rows[0]) if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._rows]

    def close(self) -> None:
        self._rows = []


class AsyncpgConnection:
    """An asyncpg connection as ``Tx`` drives it: outside a BEGIN, each statement its own
    transaction (autocommit)."""

    __slots__ = ("driver",)

    def __init__(self, driver: asyncpg.Connection) -> None:
        self.driver = driver

    def cursor(self) -> AsyncpgCursor:
        return AsyncpgCursor(self)

    def commit(self) -> None:
        self._simple("COMMIT")

    def rollback(self) -> None:
        self._simple("ROLLBACK")

    def _simple(self, statement: str) -> None:
        try:
            await_only(self.driver.execute(statement))
        except RAISED as exc:
            raise translated(exc) from exc
