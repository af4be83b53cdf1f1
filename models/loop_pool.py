"""The money path's PostgreSQL connections on the event loop: asyncpg, pooled by hand.

A payment on PostgreSQL is a read or two and one function call, each its own transaction
(``Database.autocommit_on_loop``). Measured from the loop, a unit of two such statements cost
the process about 290 µs of CPU through SQLAlchemy's pool and psycopg's asyncio mode, and
costs about 130 here (docs/BENCHMARKS.md). So this pool is a list: no reset query on return
(a unit leaves no transaction open: each statement is its own), no event hooks. A connection
is checked at checkout the way the psycopg pool's is (``models.db._alive_on_checkout``): the
server's close of a connection that sat idle (a restart, a terminated backend) is waiting in
its socket, and a dead one makes every idle connection suspect. The function call itself
goes through the pool's group (``models.pg_group``), which commits it with the calls waiting
beside it on a connection of the group's own.
"""

from __future__ import annotations

import asyncio
import select
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import asyncpg
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.util import await_only

from models import awaited
from models.errors import DomainError
from models.pg_group import PgGroup
from models.sql import Tx


def asyncpg_dsn(url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy URL of PostgreSQL (any driver named in it)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def quiet(fd: int) -> bool:
    """Whether an idle database connection's socket has nothing to read. An idle connection
    that is not listening has nothing to say: anything there (the server's FATAL message, its
    close) means the server is done with it. poll, not select: a process holding thousands of
    WebSockets gives its new connections descriptors past select's 1,024."""
    waiting = select.poll()
    waiting.register(fd, select.POLLIN)
    return not waiting.poll(0)


def _is_idle_and_open(connection: asyncpg.Connection) -> bool:
    if connection.is_closed():
        return False
    # asyncpg offers no public handle on its socket; without one, is_closed alone decides.
    transport = getattr(connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is None or quiet(sock.fileno())


def _sound_after(exc: BaseException) -> bool:
    """Whether a connection can serve again after ``exc`` left its unit: a business refusal
    raised between statements, or the server's refusal of a value or of a duplicate key (its
    protocol is idle again once the refusal is read). Anything else (a lost connection, an
    interrupted statement, an error of the driver's own) may have left it mid-exchange."""
    if isinstance(exc, DBAPIError):
        return isinstance(exc.orig, (awaited.IntegrityError, awaited.DataError))
    return isinstance(exc, DomainError)


class LoopPool:
    """At most ``size`` asyncpg connections of one event loop, made when first needed; a
    checkout waits ``timeout`` seconds for one to come back, then raises SQLAlchemy's pool
    timeout (answered 503 like the other pools')."""

    def __init__(self, url: str, *, size: int, timeout: float) -> None:
        self._dsn = asyncpg_dsn(url)
        self._size = size
        self._timeout = timeout
        self._idle: list[asyncpg.Connection] = []
        self._opened = 0
        # Checkouts waiting for a connection; each is handed one, or None to try again.
        self._waiting: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        # A connection of its own: its units hold theirs while they wait for it.
        self.group = PgGroup(lambda: asyncpg.connect(self._dsn), _is_idle_and_open)

    async def _connect(self) -> asyncpg.Connection:
        self._opened += 1
        try:
            return await asyncpg.connect(self._dsn)
        except BaseException as exc:
            self._opened -= 1
            self._hand_over(None)
            if isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                error = awaited.translated(exc)
                raise DBAPIError.instance("connect", (), error, awaited.Error) from exc
            raise

    def _forget(self, connection: asyncpg.Connection) -> None:
        self._opened -= 1
        connection.terminate()

    async def take(self) -> asyncpg.Connection:
        while True:
            if self._idle:
                connection = self._idle.pop()
                if _is_idle_and_open(connection):
                    return connection
                # A restart closes them all: drop every idle one rather than meet each.
                self._forget(connection)
                while self._idle:
                    self._forget(self._idle.pop())
                continue
            if self._opened < self._size:
                return await self._connect()
            handed = await self._wait()
            if handed is not None:
                return handed

    async def _wait(self) -> asyncpg.Connection | None:
        waiter: asyncio.Future[asyncpg.Connection | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(self._timeout):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed over in the instant the wait was given up: pass it on, not lose it.
                handed = waiter.result()
                if handed is None:
                    self._hand_over(None)
                else:
                    self.give_back(handed, broken=False)
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(
                    f"no PostgreSQL connection came back within {self._timeout} s"
                ) from None
            raise

    def _hand_over(self, connection: asyncpg.Connection | None) -> bool:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    def give_back(self, connection: asyncpg.Connection, *, broken: bool) -> None:
        if broken or connection.is_closed():
            self._forget(connection)
            # Room for a new connection: a waiting checkout makes it.
            self._hand_over(None)
        elif not self._hand_over(connection):
            # Last in, first out: the busiest connections stay warm, the rest stay idle.
            self._idle.append(connection)

    @contextmanager
    def unit(self, *, transaction: bool = False) -> Iterator[Tx]:
        """A ``Tx`` on a pooled connection, for a unit run by ``app.http.on_loop``: each
        statement its own transaction, or with ``transaction`` all of them in one, committed
        when the block ends and rolled back if it raises (asyncpg has no pipeline: each
        statement, the BEGIN and the COMMIT are a round trip each)."""
        connection = await_only(self.take())
        broken = False
        try:
            driver = awaited.AsyncpgConnection(connection)
            group = None if transaction else self.group
            tx = Tx(driver, is_sqlite=False, dbapi_error=awaited.Error, numbered=True, group=group)
            if transaction:
                tx.run("BEGIN")
            yield tx
            if transaction:
                tx.commit()
        except BaseException as exc:
            broken = not _sound_after(exc)
            if transaction and not broken:
                try:
                    driver.rollback()
                except awaited.Error:
                    broken = True
            raise
        finally:
            self.give_back(connection, broken=broken)

    async def close(self) -> None:
        """Close the idle connections; on the loop that made them."""
        await self.group.close()
        idle, self._idle = self._idle, []
        for connection in idle:
            self._opened -= 1
            with suppress(Exception):
                await connection.close(timeout=5)
