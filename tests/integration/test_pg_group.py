"""PostgreSQL's group commit for the money path (``models.pg_group``): statements waiting
together commit in one transaction and each caller gets its own row; one statement's error
fails only its caller; batches of two processes that lock the same rows crosswise do not
deadlock, because each batch locks all its rows first, in id order. Whole payments through
the group are covered by the payment, concurrency and state-machine tests on PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from models import awaited
from models.loop_pool import _is_idle_and_open, asyncpg_dsn
from models.pg_group import PgGroup

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]


@pytest.fixture
def dsn(database_url: str) -> str:
    return asyncpg_dsn(database_url)


def group_of(dsn: str) -> PgGroup:
    return PgGroup(lambda: asyncpg.connect(dsn), _is_idle_and_open)


async def _accounts(admin: asyncpg.Connection, *ids: str) -> None:
    await admin.executemany(
        "INSERT INTO account (id, handle, display_name, kind, balance, last_seq, created_at)"
        " VALUES ($1, $1, $1, 'user', 0, 0, now())",
        [(id_,) for id_ in ids],
    )


def test_statements_waiting_together_commit_in_one_transaction(dsn: str) -> None:
    """Ten statements asked for at once: one batch, one transaction, every caller its row."""

    async def scenario() -> None:
        group = group_of(dsn)
        try:
            rows = await asyncio.gather(
                *(
                    group.one("SELECT $1::int AS n, txid_current() AS tx", (n,), accounts=())
                    for n in range(10)
                )
            )
            assert [row["n"] for row in rows] == list(range(10))
            assert len({row["tx"] for row in rows}) == 1
            assert (group.batches, group.fallbacks) == (1, 0)
            alone = await group.one("SELECT txid_current() AS tx", (), accounts=())
            assert alone["tx"] != rows[0]["tx"] and group.batches == 2
        finally:
            await group.close()

    asyncio.run(scenario())


def test_a_statement_that_locks_nothing_is_batched_as_it_is(dsn: str) -> None:
    """No row to lock first, so no statement of the batch is wrapped: a top-level WITH that
    inserts (as a code's issue does) commits with the others in one transaction."""

    async def scenario() -> None:
        admin = await asyncpg.connect(dsn)
        group = group_of(dsn)
        try:
            await admin.execute("CREATE TABLE grouped (k text PRIMARY KEY)")
            insert = (
                "WITH added AS (INSERT INTO grouped (k) VALUES ($1) RETURNING k)"
                " SELECT k, txid_current() AS tx FROM added"
            )
            rows = await asyncio.gather(*(group.one(insert, (k,), accounts=()) for k in "abcde"))
            assert [row["k"] for row in rows] == list("abcde")
            assert len({row["tx"] for row in rows}) == 1
            assert (group.batches, group.fallbacks) == (1, 0)
        finally:
            await group.close()
            await admin.close()

    asyncio.run(scenario())


def test_an_error_fails_only_its_own_caller_and_the_others_commit_once(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Statements that write through a function, as ``paycode_pay`` does. A batch of two
    commits both. Then one of four divides by zero after its insert: the server rolls the
    batch back, each statement runs again alone, and only the failing one's caller gets the
    error (as PEP 249's DataError, which the app answers 422); every other row is written
    once."""

    async def scenario() -> None:
        admin = await asyncpg.connect(dsn)
        group = group_of(dsn)
        try:
            await admin.execute("CREATE TABLE grouped (k text PRIMARY KEY)")
            await admin.execute(
                "CREATE FUNCTION grouped_insert(k text, d int) RETURNS int LANGUAGE sql AS"
                " $$ INSERT INTO grouped (k) VALUES (k); SELECT 12 / d $$"
            )
            insert = "SELECT grouped_insert($1, $2::int) AS q"

            async def batch(*rows: tuple[str, int]) -> list[Any]:
                asked = (group.one(insert, row, accounts=()) for row in rows)
                return await asyncio.gather(*asked, return_exceptions=True)

            together = await batch(("a", 1), ("b", 2))
            assert [row["q"] for row in together] == [12, 6]
            assert (group.batches, group.fallbacks) == (1, 0)

            answers = await batch(("c", 3), ("d", 4), ("e", 0), ("f", 6))
            assert [a["q"] for a in answers if not isinstance(a, BaseException)] == [4, 3, 2]
            assert isinstance(answers[2], awaited.DataError)
            assert isinstance(answers[2].__cause__, asyncpg.DivisionByZeroError)
            assert (group.batches, group.fallbacks) == (2, 1)
            assert "a batch of 4 rolled back (22012 DivisionByZeroError)" in caplog.text
            kept = await admin.fetch("SELECT k FROM grouped ORDER BY k")
            assert [row["k"] for row in kept] == ["a", "b", "c", "d", "f"]
        finally:
            await group.close()
            await admin.close()

    asyncio.run(scenario())


def test_a_group_cancelled_mid_batch_answers_every_caller(dsn: str) -> None:
    """The loop shutting down cancels the group while a rolled-back batch runs again one by
    one: every caller of the batch is answered (cancelled), none waits forever."""

    async def scenario() -> None:
        group = group_of(dsn)
        try:
            slow = "SELECT 1 / $1::int AS q, pg_sleep($2::float)"
            asked = [
                asyncio.ensure_future(group.one(slow, row, accounts=()))
                for row in ((0, 0.0), (1, 5.0), (1, 0.0))
            ]
            await asyncio.sleep(0.5)
            assert group.fallbacks == 1 and group._draining is not None
            group._draining.cancel()
            answers = await asyncio.wait_for(asyncio.gather(*asked, return_exceptions=True), 5)
            assert isinstance(answers[0], awaited.DataError)
            assert all(isinstance(a, asyncio.CancelledError) for a in answers[1:])
        finally:
            await group.close()

    asyncio.run(scenario())


# Each locks one account, then holds its lock a moment so that the other batch's first
# statement takes its own before this batch's second statement asks for it.
_LOCK_ONE = (
    "SELECT count(*) AS n FROM (SELECT 1 FROM account WHERE id = $1 FOR NO KEY UPDATE) AS a,"
    " pg_sleep($2::float)"
)


def test_batches_locking_the_same_rows_crosswise_do_not_deadlock(dsn: str) -> None:
    """Two processes' groups, each with a batch of two statements: one locks A then B, the
    other B then A. Statement by statement that is a deadlock, which the server breaks after
    ``deadlock_timeout`` by failing one batch; locked first, in id order, one batch waits for
    the other and neither fails."""

    async def scenario() -> None:
        admin = await asyncpg.connect(dsn)
        first, second = group_of(dsn), group_of(dsn)
        try:
            await _accounts(admin, "acc_a", "acc_b", "acc_c")

            def batch(group: PgGroup, ids: tuple[str, str]) -> list[Any]:
                return [
                    group.one(_LOCK_ONE, (ids[0], 0.2), accounts=(ids[0],)),
                    group.one(_LOCK_ONE, (ids[1], 0.0), accounts=(ids[1], "acc_c")),
                ]

            rows = await asyncio.wait_for(
                asyncio.gather(
                    *batch(first, ("acc_a", "acc_b")), *batch(second, ("acc_b", "acc_a"))
                ),
                30,
            )
            assert [row["n"] for row in rows] == [1, 1, 1, 1]
            assert (first.fallbacks, second.fallbacks) == (0, 0)
            assert (first.batches, second.batches) == (1, 1)
        finally:
            await first.close()
            await second.close()
            await admin.close()

    asyncio.run(scenario())


async def _codes(admin: asyncpg.Connection, start: int, count: int) -> None:
    """``count`` codes of one agency of acc_a's, numbered from ``start``."""
    await admin.execute(
        "INSERT INTO agency (id, payee_id, agent_id, status, can_refund, created_by_id,"
        " created_at) VALUES ('agy_a', 'acc_a', 'acc_b', 'active', false, 'acc_a', now())"
        " ON CONFLICT DO NOTHING"
    )
    await admin.executemany(
        "INSERT INTO code (id, agency_id, payee_id, agent_id, created_by_id, kind, status,"
        " amount, items, token, short_code, created_at) VALUES ($1::text, 'agy_a', 'acc_a',"
        " 'acc_b', 'acc_b', 'dynamic', 'active', 100, '[]', $1, right($1::text, 10), now())",
        [(f"cod_{n:08d}",) for n in range(start, start + count)],
    )


async def _closed_and_counted(admin: asyncpg.Connection, group: PgGroup) -> None:
    """Close the group's connection and wait for its backend to end: a backend publishes its
    table and function counters when it ends."""
    pid = group._connection.get_server_pid()  # type: ignore[union-attr]
    await group.close()
    for _ in range(100):
        if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.05)


def test_a_batch_takes_its_locks_in_one_call_whatever_its_size(dsn: str) -> None:
    """Only the batch's first statement calls ``paycode_lock``: the others pass no rows, and a
    call that locks nothing would still cost a PL/pgSQL call each."""

    async def scenario() -> None:
        admin = await asyncpg.connect(dsn)
        group = PgGroup(
            lambda: asyncpg.connect(dsn, server_settings={"track_functions": "all"}),
            _is_idle_and_open,
        )
        try:
            await _accounts(admin, "acc_a", "acc_b")
            rows = await asyncio.gather(
                *(
                    group.one("SELECT $1::int AS n", (n,), accounts=("acc_a", "acc_b"))
                    for n in range(5)
                )
            )
            assert [row["n"] for row in rows] == list(range(5))
            assert (group.batches, group.fallbacks) == (1, 0)
            await _closed_and_counted(admin, group)
            calls = await admin.fetchval(
                "SELECT calls FROM pg_stat_user_functions WHERE funcname = 'paycode_lock'"
            )
            assert calls == 1
        finally:
            await group.close()
            await admin.close()

    asyncio.run(scenario())


def test_a_batch_locks_its_rows_by_key_whatever_the_tables_held_when_it_was_planned(
    dsn: str,
) -> None:
    """A connection plans the batch's locks once, maybe while the tables are nearly empty (a
    new shop; a server whose autovacuum has not analyzed them, or is off). Planned then as a
    scan of the whole table, every later batch would read every code ever issued while it
    holds its accounts' locks. The locks go by primary key whatever the planner saw."""

    async def scenario() -> None:
        admin = await asyncpg.connect(dsn)
        group = group_of(dsn)
        try:
            await _accounts(admin, "acc_a", "acc_b")
            await _codes(admin, 0, 4)

            async def batch() -> None:
                await asyncio.gather(
                    *(
                        group.one(
                            "SELECT $1::int AS n",
                            (n,),
                            accounts=("acc_a",),
                            codes=(f"cod_{n:08d}",),
                        )
                        for n in range(2)
                    )
                )

            for _ in range(8):  # past the custom plans a prepared statement starts with
                await batch()
            await _codes(admin, 4, 3000)
            for _ in range(3):
                await batch()
            assert (group.batches, group.fallbacks) == (11, 0)
            await _closed_and_counted(admin, group)
            scans, read = await admin.fetchrow(
                "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0), coalesce(seq_tup_read, 0)"
                " FROM pg_stat_user_tables WHERE relname = 'code'"
            )
            assert scans >= 11, "the group's counters were not published"
            assert read < 3000, f"the batches read {read} codes by scanning the table"
        finally:
            await group.close()
            await admin.close()

    asyncio.run(scenario())


def test_a_connection_the_server_closed_is_replaced_before_the_batch(dsn: str) -> None:
    """The group's connection, ended by the server while idle (a restart), is found closed
    before the next batch is sent, which runs on a new one."""

    async def scenario() -> None:
        admin = await asyncpg.connect(dsn)
        group = group_of(dsn)
        try:
            before = (await group.one("SELECT pg_backend_pid() AS pid", (), accounts=()))["pid"]
            await admin.execute("SELECT pg_terminate_backend($1)", before)
            for _ in range(100):
                gone = await admin.fetchval(
                    "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $1", before
                )
                if gone:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)
            after = (await group.one("SELECT pg_backend_pid() AS pid", (), accounts=()))["pid"]
            assert after != before
        finally:
            await group.close()
            await admin.close()

    asyncio.run(scenario())
