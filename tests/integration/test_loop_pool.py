"""The event loop's PostgreSQL pool (payments, code issuance, the webhook pass) checks a
connection at checkout without a round trip: one the server closed while it sat in the pool
(a restart, an idle timeout, a terminated backend) is found there, and the unit runs on a
fresh connection instead of failing."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest

from app.http import on_loop
from models.db import Database
from tests.services import PostgresFactory, unavailable

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url(pg_factory: PostgresFactory) -> Iterator[str]:
    if not pg_factory.available():
        unavailable("PostgreSQL is not reachable on 127.0.0.1:5432")
    url = pg_factory.create()
    yield url
    pg_factory.drop(url)


def _backend_pid(db: Database) -> int:
    with db.autocommit_on_loop() as tx:
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


@pytest.mark.parametrize("pooled", [1, 3])
@pytest.mark.parametrize("descriptors", ["few", "past 1024"])
def test_connections_the_server_closed_in_the_pool_are_replaced(
    pg_url: str, pooled: int, descriptors: str, request: pytest.FixtureRequest
) -> None:
    """Every pooled connection's backend is terminated while idle: the next units succeed,
    each on a backend that did not exist before."""
    if descriptors != "few":
        request.getfixturevalue("crowded")

    async def scenario() -> None:
        db = Database(pg_url)
        try:
            before = set(await asyncio.gather(*(on_loop(_backend_pid, db) for _ in range(pooled))))
            assert len(before) == pooled
            _terminate(db, before)
            after = await asyncio.gather(*(on_loop(_backend_pid, db) for _ in range(pooled)))
            assert not before & set(after)
        finally:
            await db.dispose_loop_engine()
            db.dispose()

    asyncio.run(scenario())
