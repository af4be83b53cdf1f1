"""The event loop's PostgreSQL pools (asyncpg for payments; psycopg for code issuance and
the webhook pass) check a connection at checkout without a round trip: one the server closed
while it sat in the pool (a restart, an idle timeout, a terminated backend) is found there,
and the unit runs on a fresh connection instead of failing."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.http import on_loop
from models.db import Database
from models.errors import Conflict
from models.loop_pool import LoopPool
from tests.services import PostgresFactory, unavailable

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url(pg_factory: PostgresFactory) -> Iterator[str]:
    if not pg_factory.available():
        unavailable("PostgreSQL is not reachable on 127.0.0.1:5432")
    url = pg_factory.create()
    yield url
    pg_factory.drop(url)


# Each pool's unit: the money path's (asyncpg), the other units' (psycopg).
POOLS = ["autocommit_on_loop", "raw_read_on_loop"]


def _backend_pid(db: Database, pool: str) -> int:
    with getattr(db, pool)() as tx:
        # The sleep keeps the connection out of the pool while the others are taken.
        row = tx.one("SELECT pg_backend_pid(), pg_sleep(0.05)")
        assert row is not None
        return int(row[0])


def _terminate(db: Database, pids: set[int]) -> None:
    """End the backends from the thread pool's engine, and wait until they are gone (in
    autocommit: a transaction would read pg_stat_activity's first snapshot every time)."""
    with db.writer.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
        for pid in pids:
            admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = admin.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%(pids)s)",
                {"pids": list(pids)},
            ).scalar_one()
            if alive == 0:
                return
            time.sleep(0.05)
    raise AssertionError(f"backends {pids} still alive")


@pytest.fixture
def crowded() -> Iterator[None]:
    """1,100 descriptors open, so the connections made next get numbers past select's 1,024,
    as in a process holding thousands of WebSockets."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1_100)]
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("pooled", [1, 3])
@pytest.mark.parametrize("descriptors", ["few", "past 1024"])
def test_connections_the_server_closed_in_the_pool_are_replaced(
    pg_url: str, pool: str, pooled: int, descriptors: str, request: pytest.FixtureRequest
) -> None:
    """Every pooled connection's backend is terminated while idle: the next units succeed,
    each on a backend that did not exist before."""
    if descriptors != "few":
        request.getfixturevalue("crowded")

    async def scenario() -> None:
        db = Database(pg_url)
        try:
            before = set(
                await asyncio.gather(*(on_loop(_backend_pid, db, pool) for _ in range(pooled)))
            )
            assert len(before) == pooled
            _terminate(db, before)
            after = await asyncio.gather(*(on_loop(_backend_pid, db, pool) for _ in range(pooled)))
            assert not before & set(after)
        finally:
            await db.dispose_loop_engine()
            db.dispose()

    asyncio.run(scenario())


def test_the_money_pool_hands_back_waits_and_times_out(pg_url: str) -> None:
    """With every connection out, a checkout waits for one to come back and gets it; past the
    timeout it raises the pool timeout the app answers 503; a connection given back broken
    makes room for a new one."""

    async def scenario() -> None:
        pool = LoopPool(pg_url, size=1, timeout=0.2)
        try:
            held = await pool.take()
            with pytest.raises(PoolTimeout):
                await pool.take()
            waiting = asyncio.create_task(pool.take())
            await asyncio.sleep(0.05)
            pool.give_back(held, broken=False)
            assert await waiting is held
            waiting = asyncio.create_task(pool.take())
            await asyncio.sleep(0.05)
            pool.give_back(held, broken=True)
            fresh = await asyncio.wait_for(waiting, 10)
            assert fresh is not held and held.is_closed()
            assert await fresh.fetchval("SELECT 1") == 1
            pool.give_back(fresh, broken=False)
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_transaction_on_the_money_pool_commits_or_rolls_back_whole(pg_url: str) -> None:
    """``transaction_on_loop`` (code issuance): the block's statements commit together, or
    none does when it raises; after a business refusal or a refused statement the connection,
    rolled back, serves the next unit."""

    def insert(db: Database, ids: list[str], fail: bool = False) -> int:
        with db.transaction_on_loop() as tx:
            for id_ in ids:
                tx.run(
                    "INSERT INTO lookup_failure (id, account_id, client, created_at)"
                    " VALUES (?, 'acc', 'client', now())",
                    (id_,),
                )
            if fail:
                raise Conflict("the unit refuses", code="refused")
            row = tx.one("SELECT pg_backend_pid()")
            assert row is not None
            return int(row[0])

    async def scenario() -> None:
        db = Database(pg_url, pool_size=1)
        try:
            backend = await on_loop(insert, db, ["lkf_c", "lkf_d"])
            with pytest.raises(Conflict):
                await on_loop(insert, db, ["lkf_a", "lkf_b"], True)
            with pytest.raises(IntegrityError):
                await on_loop(insert, db, ["lkf_e", "lkf_c"])
            assert await on_loop(insert, db, ["lkf_f"]) == backend
            with db.writer.connect() as check:
                ids = check.exec_driver_sql("SELECT id FROM lookup_failure ORDER BY id")
                assert [row[0] for row in ids] == ["lkf_c", "lkf_d", "lkf_f"]
        finally:
            await db.dispose_loop_engine()
            db.dispose()

    asyncio.run(scenario())


def test_a_connection_is_dropped_after_anything_but_a_refusal(pg_url: str) -> None:
    """An error that is neither a business refusal nor the server's refusal of a value or a
    key (here a bug's ValueError between two statements; in life a statement cut off by a
    server shutting down) may leave the connection mid-exchange: it is not used again."""

    def backend(db: Database, fail: BaseException | None = None) -> int:
        with db.autocommit_on_loop() as tx:
            row = tx.one("SELECT pg_backend_pid()")
            assert row is not None
            if fail is not None:
                raise fail
            return int(row[0])

    async def scenario() -> None:
        db = Database(pg_url, pool_size=1)
        try:
            first = await on_loop(backend, db)
            with pytest.raises(Conflict):
                await on_loop(backend, db, Conflict("refused", code="refused"))
            assert await on_loop(backend, db) == first
            with pytest.raises(ValueError):
                await on_loop(backend, db, ValueError("a bug"))
            assert await on_loop(backend, db) != first
        finally:
            await db.dispose_loop_engine()
            db.dispose()

    asyncio.run(scenario())
