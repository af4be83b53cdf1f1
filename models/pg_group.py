"""Group commit for PostgreSQL's money path: the payments a process has waiting commit together.

A payment on PostgreSQL is one statement (``models.payments``: the ``paycode_pay`` function),
and each used to be a transaction of its own: a commit, a flush of the write-ahead log and a
round trip per payment, and the payee's row locked from the statement's start to its commit.
Its commit was a fifth of the backend's CPU (docs/BENCHMARKS.md), and with every counter of
one shop paying the same payee the payments queued on that row one commit at a time.

Here one connection per process sends every payment waiting when the previous batch is done,
in one round trip and one transaction (asyncpg's ``fetchmany``: one Bind and Execute per
payment, one Sync), and each caller gets its row once the batch has committed, so nothing is
published that could still be rolled back. A refusal inside the function writes nothing and
is an answer, not an error, so it never fails the others. An error (a duplicate
Idempotency-Key sent through another process at the same moment) rolls the whole batch back
on the server; then each payment runs alone, as it did before, and only its own caller gets
its error. A lost connection fails the batch's callers as it would have failed each of them.

Each payment locks its accounts in ascending id order, and then its code; two batches of two
processes could still lock crosswise (one batch's first payment holds an account the other's
second wants, and the other way round). So a batch's first statement locks every account of
the batch in ascending id order, then every code in ascending id order, before any payment
runs: every batch, like every single money movement, takes its locks in one global order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import asyncpg

from models.awaited import RAISED, translated

log = logging.getLogger("paycode.pg_group")

# A batch holds its rows locked until it commits: bounded, so another process's payments on
# the same rows never wait behind more than this many.
MOST_PER_BATCH = 64

# The batch's locks, in the global order, taken by its first statement through
# ``paycode_lock`` (migration 0007: by primary key, however small the tables were when the
# connection planned it). Every later statement of the batch passes NULL arrays and does not
# call it at all: a call that locks nothing still cost a PL/pgSQL call with its settings saved
# and restored, a tenth of the backend's CPU at 200 payments/s (docs/BENCHMARKS.md).
# The statement runs only once the locks' count is known to pass the filter: PostgreSQL 15
# plans it as a one-time filter above the whole statement, evaluated before any of it (EXPLAIN
# shows the lock's InitPlan gating the rest); the OFFSET keeps the planner from merging the
# statement into the lock's query.
_LOCKED_FIRST = (
    "SELECT q.* FROM (SELECT (SELECT CASE WHEN ${accounts}::text[] IS NULL"
    " AND ${codes}::text[] IS NULL THEN 0"
    " ELSE paycode_lock(${accounts}::text[], ${codes}::text[]) END)"
    " AS locked) AS pre"
    " CROSS JOIN LATERAL (SELECT * FROM ({statement}) AS s"
    " WHERE pre.locked >= 0 OFFSET 0) AS q"
)

Connect = Callable[[], Coroutine[Any, Any, asyncpg.Connection]]
Check = Callable[[asyncpg.Connection], bool]


@lru_cache(maxsize=16)
def batched(statement: str, params: int) -> str:
    """``statement`` (numbered placeholders, ``params`` of them) behind the batch's locks,
    which take two more parameters."""
    return _LOCKED_FIRST.format(accounts=params + 1, codes=params + 2, statement=statement)


@dataclass(slots=True)
class _Unit:
    statement: str
    params: Sequence[Any]
    accounts: Sequence[str | None]
    codes: Sequence[str | None]
    answer: asyncio.Future[asyncpg.Record | None] = field(repr=False)


class PgGroup:
    """The group's one connection on one event loop, made when first needed and made again
    when ``usable`` finds it closed or lost."""

    def __init__(self, connect: Connect, usable: Check) -> None:
        self._connect = connect
        self._usable = usable
        self._connection: asyncpg.Connection | None = None
        self._waiting: list[_Unit] = []
        self._draining: asyncio.Task[None] | None = None
        # Batches whose error sent their payments back to run alone, for the tests and the
        # benchmarks: a deadlock between batches would show here.
        self.fallbacks = 0
        self.batches = 0

    async def one(
        self,
        statement: str,
        params: Sequence[Any],
        *,
        accounts: Sequence[str | None],
        codes: Sequence[str | None] = (),
    ) -> asyncpg.Record | None:
        """The statement's one row, once its batch has committed. ``accounts`` and ``codes``:
        the ids of the rows it locks (None: no such party), which its batch locks first; a
        statement that locks rows is a SELECT, a subquery of the batch's first statement
        (its writes are a function's, as ``paycode_pay``'s)."""
        answer: asyncio.Future[asyncpg.Record | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Unit(statement, params, accounts, codes, answer))
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        try:
            return await answer
        except RAISED as exc:
            # As the unit's own statement would have raised it (``models.awaited``).
            raise translated(exc) from exc

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            try:
                await connection.close(timeout=5)
            except Exception:
                connection.terminate()

    async def _drain(self) -> None:
        batch: list[_Unit] = []
        try:
            while self._waiting:
                statement = self._waiting[0].statement
                batch = [unit for unit in self._waiting if unit.statement == statement]
                batch = batch[:MOST_PER_BATCH]
                taken = set(map(id, batch))
                self._waiting = [unit for unit in self._waiting if id(unit) not in taken]
                await self._run(batch)
        except BaseException as exc:
            # Cancelled (the loop shutting down) mid-batch: neither the batch in flight nor
            # those waiting may wait for an answer forever.
            for unit in (*batch, *self._waiting):
                _fail(unit, exc)
            self._waiting = []
            raise
        finally:
            self._draining = None

    async def _usable_connection(self) -> asyncpg.Connection:
        connection = self._connection
        if connection is not None and not self._usable(connection):
            # A restarted server closed it while it sat idle: a new one, not a failed batch.
            connection.terminate()
            connection = self._connection = None
        if connection is None:
            connection = self._connection = await self._connect()
        return connection

    async def _run(self, batch: list[_Unit]) -> None:
        try:
            connection = await self._usable_connection()
        except Exception as exc:
            for unit in batch:
                _fail(unit, exc)
            return
        self.batches += 1
        if len(batch) == 1:
            await self._alone(connection, batch[0])
            return
        first = batch[0]
        accounts = sorted({a for unit in batch for a in unit.accounts if a is not None})
        codes = sorted({c for unit in batch for c in unit.codes if c is not None})
        statement, args = first.statement, [unit.params for unit in batch]
        if accounts or codes:
            statement = batched(first.statement, len(first.params))
            args = [(*unit.params, None, None) for unit in batch]
            args[0] = (*first.params, accounts, codes)
        try:
            rows = await connection.fetchmany(statement, args)
        except asyncpg.PostgresError as exc:
            # The server rolled the whole batch back: each payment alone, its error its own.
            # Said aloud: a batch that always fails would only look like a slow group.
            self.fallbacks += 1
            log.warning(
                "a batch of %d rolled back (%s %s); each runs again alone",
                len(batch),
                exc.sqlstate,
                exc.__class__.__name__,
            )
            for unit in batch:
                await self._alone(connection, unit)
            return
        except BaseException as exc:
            self._lost(connection)
            if not isinstance(exc, Exception):
                raise
            for unit in batch:
                _fail(unit, exc)
            return
        if len(rows) != len(batch):
            # Every statement the group runs answers one row; anything else is a bug, which
            # no caller may take for a refusal: its batch has committed.
            bug = AssertionError(f"a batch of {len(batch)} answered {len(rows)} rows")
            for unit in batch:
                _fail(unit, bug)
            return
        for unit, row in zip(batch, rows, strict=True):
            if not unit.answer.done():
                unit.answer.set_result(row)

    async def _alone(self, connection: asyncpg.Connection, unit: _Unit) -> None:
        try:
            row = await connection.fetchrow(unit.statement, *unit.params)
        except asyncpg.PostgresError as exc:
            _fail(unit, exc)
        except BaseException as exc:
            self._lost(connection)
            if not isinstance(exc, Exception):
                raise
            _fail(unit, exc)
        else:
            if not unit.answer.done():
                unit.answer.set_result(row)

    def _lost(self, connection: asyncpg.Connection) -> None:
        """After an error of the connection itself: it may be mid-exchange, so never reused."""
        if self._connection is connection:
            self._connection = None
        connection.terminate()


def _fail(unit: _Unit, exc: BaseException) -> None:
    if unit.answer.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        unit.answer.cancel()
    else:
        unit.answer.set_exception(exc)
