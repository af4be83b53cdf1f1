"""SQLite's group commit: units that arrive while a batch commits go together in the next
one, each in its own savepoint, so a unit that fails rolls back alone and the others commit;
units from the event loop are written by the loop itself, which never waits for the write
lock; and a payment refused inside a batch leaves the other payments of the batch paid."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest
from sqlalchemy import make_url
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from models.db import Database
from models.group import GroupWriter
from models.sql import Tx
from tests.api import Api
from tests.conftest import ADMIN_TOKEN
from tests.services import SqliteFactory

INSERT = "INSERT INTO lookup_failure (id, account_id, client, created_at) VALUES (?, ?, ?, ?)"


def _insert(name: str) -> Any:
    def work(tx: Tx) -> str:
        tx.run(INSERT, (name, "acc", "client", "2026-01-01 00:00:00.000000"))
        if name.startswith("bad"):
            raise ValueError(name)
        return name

    return work


def _holder() -> tuple[Any, threading.Event, threading.Event]:
    """A unit that holds the writer until released, and the events that tell it has started
    and let it go: what arrives meanwhile queues for the next batch."""
    holding, release = threading.Event(), threading.Event()

    def hold(tx: Tx) -> str:
        holding.set()
        release.wait(10)
        return "held"

    return hold, holding, release


def test_one_failing_unit_rolls_back_alone_and_the_batch_commits(
    sqlite_factory: SqliteFactory,
) -> None:
    """While a first unit holds the writer, three more queue; they run as one batch, the
    failing one's row is gone and its caller gets its error, the two others are committed."""
    db = Database(sqlite_factory.create())
    group = db.group
    assert group is not None
    hold, holding, release = _holder()

    try:
        first = group.submit(hold)
        assert holding.wait(10)
        others = [group.submit(_insert(n)) for n in ("ok1", "bad", "ok2")]
        deadline = time.monotonic() + 10
        while group._queue.qsize() < 3:
            assert time.monotonic() < deadline, "the units never queued behind the holder"
            release.wait(0.01)
        release.set()
        assert first.result(10) == "held"
        assert others[0].result(10) == "ok1"
        with pytest.raises(ValueError, match="bad"):
            others[1].result(10)
        assert others[2].result(10) == "ok2"
        assert group.batches == 2 and group.units == 4
        with db.raw_read() as tx:
            rows = tx.all("SELECT id FROM lookup_failure ORDER BY id")
        assert rows == [("ok1",), ("ok2",)]
    finally:
        db.dispose()


def test_a_unit_cancelled_while_it_waits_is_skipped_and_the_writer_goes_on(
    sqlite_factory: SqliteFactory,
) -> None:
    """An event loop that stops awaiting a submitted unit (its task was cancelled) cancels the
    unit's future while it waits: the unit never runs, and the writer still serves the next
    units instead of dying on a future it cannot settle."""
    db = Database(sqlite_factory.create())
    group = db.group
    assert group is not None
    hold, holding, release = _holder()

    try:
        first = group.submit(hold)
        assert holding.wait(10)
        cancelled = group.submit(_insert("cancelled"))
        kept = group.submit(_insert("kept"))
        assert cancelled.cancel()
        release.set()
        assert first.result(10) == "held"
        assert kept.result(10) == "kept"
        assert group.submit(_insert("after")).result(10) == "after"
        with db.raw_read() as tx:
            rows = tx.all("SELECT id FROM lookup_failure ORDER BY id")
        assert rows == [("after",), ("kept",)]
    finally:
        db.dispose()


def _noting(name: str, threads: list[int]) -> Any:
    """``_insert(name)`` that notes the thread it ran on."""
    work = _insert(name)

    def unit(tx: Tx) -> str:
        threads.append(threading.get_ident())
        return work(tx)  # type: ignore[no-any-return]

    return unit


def _written_ids(db: Database) -> list[str]:
    with db.raw_read() as tx:
        return [row[0] for row in tx.all("SELECT id FROM lookup_failure ORDER BY id")]


def test_units_from_the_event_loop_are_one_batch_written_by_the_loop(
    sqlite_factory: SqliteFactory,
) -> None:
    """Units submitted in one turn of the loop run at its next turn, in one transaction and on
    the loop's own thread; the failing one rolls back alone, and one cancelled before that
    turn never runs."""
    db = Database(sqlite_factory.create())
    group = db.group
    assert group is not None
    threads: list[int] = []

    async def scenario() -> list[Any]:
        # The group's first unit opens its connection (in the writer thread).
        assert await group.submit_here(_insert("first")) == "first"
        names = ("ok1", "bad", "cancelled", "ok2")
        units = [group.submit_here(_noting(name, threads)) for name in names]
        units[2].cancel()
        return await asyncio.gather(*units, return_exceptions=True)

    try:
        outcomes = asyncio.run(scenario())
        assert outcomes[0] == "ok1" and outcomes[3] == "ok2"
        assert isinstance(outcomes[1], ValueError)
        assert isinstance(outcomes[2], asyncio.CancelledError)
        assert group.batches == 2 and group.units == 4 and group.handed_over == 1
        assert threads == [threading.get_ident()] * 3
        assert _written_ids(db) == ["first", "ok1", "ok2"]
    finally:
        db.dispose()


def test_the_loop_never_waits_for_a_write_lock_another_connection_holds(
    sqlite_factory: SqliteFactory,
) -> None:
    """While another connection (another process, the CLI) holds SQLite's write lock, a unit
    from the loop goes to the writer thread, which waits for the lock; the loop keeps turning
    meanwhile, and the unit commits once the lock is free."""
    url = sqlite_factory.create()
    db = Database(url)
    group = db.group
    assert group is not None
    other = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    held_for = 0.5

    async def scenario() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        # The group's first unit opens its connection (in the writer thread).
        assert await group.submit_here(_insert("first")) == "first"
        other.execute("BEGIN IMMEDIATE")
        loop.call_later(held_for, other.execute, "COMMIT")
        unit = group.submit_here(_insert("waited"))
        longest_gap, last = 0.0, time.monotonic()
        while not unit.done():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            longest_gap, last = max(longest_gap, now - last), now
        return await unit, longest_gap

    try:
        started = time.monotonic()
        outcome, longest_gap = asyncio.run(scenario())
        assert outcome == "waited"
        assert time.monotonic() - started >= held_for
        assert group.handed_over == 2
        # Blocked in BEGIN IMMEDIATE, the loop would have missed every tick until the release.
        assert longest_gap < held_for / 2
        assert _written_ids(db) == ["first", "waited"]
    finally:
        other.close()
        db.dispose()


async def _two_units_pending_until(
    release: threading.Event, group: GroupWriter, threads: list[int]
) -> list[str]:
    """Units "a" and "b" from the loop, still pending while the group cannot write; once
    ``release`` is set they are written, and their results come back in order."""
    units = [group.submit_here(_noting(name, threads)) for name in ("a", "b")]
    await asyncio.sleep(0.05)
    assert not any(unit.done() for unit in units)
    release.set()
    return list(await asyncio.gather(*units))


def test_units_wait_on_the_loop_while_the_writer_thread_writes(
    sqlite_factory: SqliteFactory,
) -> None:
    """While the writer thread writes a batch, the loop's units wait on the loop instead of
    following it into the thread; the thread calls the loop back when it is done, and they
    are written there, together."""
    db = Database(sqlite_factory.create())
    group = db.group
    assert group is not None
    hold, holding, release = _holder()
    threads: list[int] = []

    async def scenario() -> list[str]:
        # The group's first unit opens its connection (in the writer thread).
        assert await group.submit_here(_insert("first")) == "first"
        held = group.submit(hold)
        assert await asyncio.to_thread(holding.wait, 10)
        written = await _two_units_pending_until(release, group, threads)
        assert await asyncio.wrap_future(held) == "held"
        return written

    try:
        assert asyncio.run(scenario()) == ["a", "b"]
        assert group.handed_over == 1  # only the first unit
        assert threads == [threading.get_ident()] * 2
        assert group.batches == 3  # "first", the holder, then "a" and "b" together
        assert _written_ids(db) == ["a", "b", "first"]
    finally:
        db.dispose()


def test_units_wait_on_the_loop_while_a_checkpoint_holds_the_writer_off(
    sqlite_factory: SqliteFactory,
) -> None:
    """A thread of the process that takes SQLite's write lock inside ``held_off`` (the
    checkpointer restarting the log) keeps the loop's units on the loop: none goes to the
    writer thread to wait for the lock there, and the loop writes them together once the
    block ends."""
    url = sqlite_factory.create()
    db = Database(url)
    group = db.group
    assert group is not None
    path = make_url(url).database
    assert path is not None
    holding, release = threading.Event(), threading.Event()
    threads: list[int] = []

    def restart_like() -> None:
        with group.held_off():
            lock = sqlite3.connect(path, isolation_level=None)
            try:
                lock.execute("BEGIN IMMEDIATE")
                holding.set()
                release.wait(10)
                lock.execute("COMMIT")
            finally:
                lock.close()

    async def scenario() -> list[str]:
        assert await group.submit_here(_insert("first")) == "first"
        holder = asyncio.create_task(asyncio.to_thread(restart_like))
        assert await asyncio.to_thread(holding.wait, 10)
        written = await _two_units_pending_until(release, group, threads)
        await holder
        return written

    try:
        assert asyncio.run(scenario()) == ["a", "b"]
        assert group.handed_over == 1  # only the first unit, which opens the connection
        assert threads == [threading.get_ident()] * 2
        assert group.batches == 2  # "first", then "a" and "b" together
        assert _written_ids(db) == ["a", "b", "first"]
    finally:
        db.dispose()


def test_a_refused_payment_in_a_batch_leaves_the_others_paid(
    sqlite_factory: SqliteFactory,
) -> None:
    """Concurrent payments, one of them past its payer's balance: the others are 201 and
    paid once, the short one is 409 insufficient_funds and moved nothing."""
    # Every payment of the burst is admitted, however late a loaded machine runs the loop:
    # the batch is the point (tests/integration/test_overload.py pins what the gate refuses).
    settings = Settings(
        database_url=sqlite_factory.create(), admin_token=ADMIN_TOKEN, admission_budget_ms=60000
    )
    with TestClient(create_app(settings, migrate_schema=False)) as client:
        api = Api(client, ADMIN_TOKEN)
        payee = api.user()
        rich = [api.user(funds=100) for _ in range(6)]
        poor = api.user(funds=10)

        def pay(who: Any, key: str) -> Any:
            return api.post(
                "/payments",
                who,
                json={"payee": payee.handle, "amount": 50},
                headers={"Idempotency-Key": key},
            )

        with ThreadPoolExecutor(max_workers=7) as pool:
            answers = list(pool.map(pay, [*rich, poor], [f"k{n}" for n in range(7)]))
        assert [a.status_code for a in answers[:6]] == [201] * 6
        assert answers[6].status_code == 409
        assert answers[6].json()["error"]["code"] == "insufficient_funds"
        assert api.get("/me", payee).json()["balance"] == 300
        assert all(api.get("/me", who).json()["balance"] == 50 for who in rich)
        assert api.get("/me", poor).json()["balance"] == 10
        replay = pay(poor, "k6")
        assert replay.status_code == 409 and replay.json() == answers[6].json()


def test_a_sale_on_sqlite_goes_from_the_event_loop_to_the_writer_without_a_worker_thread(
    sqlite_factory: SqliteFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the caller's token known, a dynamic code and its payment (with an
    Idempotency-Key, by code, so the limiter is consulted) are each one unit of the group
    commit handed over by the event loop: no request of the sale enters the worker threads."""
    from app import http
    from app.relay import read_marks, sweep_tokens

    # No webhook worker: its look every 0.25 s is a worker-thread hop of its own, not the
    # sale's, and fell inside the sale now and then.
    settings = Settings(
        database_url=sqlite_factory.create(), admin_token=ADMIN_TOKEN, webhook_worker=False
    )
    with TestClient(create_app(settings, migrate_schema=False)) as client:
        api = Api(client, ADMIN_TOKEN)
        payee, agent, payer = api.user(), api.user(), api.user(funds=5000)
        agency = api.agency(payee, agent)
        # Each caller's token read once, into the cache.
        for who in (payee, agent, payer):
            assert api.get("/me", who).status_code == 200
        group = client.app.state.paycode.db.group  # type: ignore[attr-defined]
        units_before = group.units
        hops: list[Any] = []
        submit = http._WORKERS.submit

        def counted(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            # The relay's tick (every 0.5 s) reads in a worker thread of its own accord and
            # can fall inside the sale: not one of the sale's hops.
            job = args[0] if args else None
            if not (isinstance(job, partial) and job.func in (sweep_tokens, read_marks)):
                hops.append(args)
            return submit(fn, *args, **kwargs)

        monkeypatch.setattr(http._WORKERS, "submit", counted)
        code = api.code(agent, agency["id"])
        paid = api.post(
            "/payments",
            payer,
            json={"code": code["token"]},
            headers={"Idempotency-Key": "sale-1"},
        )
        assert paid.status_code == 201, paid.text
        assert hops == []
        assert group.units == units_before + 2
        replay = api.post(
            "/payments",
            payer,
            json={"code": code["token"]},
            headers={"Idempotency-Key": "sale-1"},
        )
        assert replay.status_code == 201 and replay.json() == paid.json()
        assert hops == []
