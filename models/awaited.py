"""psycopg's asyncio connection with the blocking DBAPI face that :class:`models.sql.Tx`
drives, for code that runs in a greenlet of the event loop (``app.http.on_loop``).

Each call awaits the driver's coroutine through SQLAlchemy's ``await_only``: the greenlet
yields to the loop while the database works, so the hot paths' units keep their one
blocking-style body for both pools. SQLAlchemy's own adapter of the same connection serves
its pool (connect, reset on return); this one adds what ``Tx`` needs that the adapter lacks:
pipeline mode, and rows fetched as the driver returns them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

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

    @property
    def autocommit(self) -> bool:
        return bool(self._connection.autocommit)

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        await_only(self._connection.set_autocommit(value))
