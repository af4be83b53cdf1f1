"""The queue's fan-out is read outside the write lock and written after it
(``models.webhook_queue.plan_fan_out`` / ``apply_fan_out``): two passes that read the same
new events, or a pass whose endpoint changed in between, must never create a delivery twice
or for an endpoint switched off. A first attempt's delivery is written once, with its outcome,
from its flight; a flight whose process stopped becomes pending deliveries with the ids already
sent. Both databases, the real schema, no worker running."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from app.settings import Settings
from models import webhook_queue as queue
from models.clock import utcnow
from models.db import Database
from tests.api import Api, User

LEASE = {"per_endpoint": 64, "lease": timedelta(seconds=15)}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No worker: these tests take the queue's steps by hand."""
    return dataclasses.replace(settings, webhook_worker=False, webhook_allow_private=True)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def paid_shop(api: Api) -> tuple[User, str]:
    """A payee with an endpoint for every type, and one payment to them: events owed."""
    payee, agent, payer = api.user(), api.user(), api.user(funds=10_000)
    agency = api.agency(payee, agent)
    code = api.code(agent, agency["id"], kind="static")
    hook = api.post("/webhooks", payee, json={"url": "http://127.0.0.1:9/hook"})
    assert hook.status_code == 201, hook.text
    paid = api.post("/payments", payer, json={"code": code["token"], "amount": 700})
    assert paid.status_code == 201, paid.text
    return payee, str(hook.json()["id"])


def plan(db: Database, slots: int = 100) -> queue.FanOut:
    with db.raw_read() as tx:
        return queue.plan_fan_out(tx, utcnow(), slots=slots, room={}, **LEASE)


def apply(db: Database, fan_out: queue.FanOut) -> tuple[int, list[queue.Job]]:
    with db.raw_queue_unit() as (tx, main):
        return queue.apply_fan_out(tx, fan_out, main=main)


def delivery_count(db: Database, webhook_id: str) -> int:
    with db.raw_read() as tx:
        row = tx.one("SELECT COUNT(*) FROM webhook_delivery WHERE webhook_id = ?", (webhook_id,))
    assert row is not None
    return int(row[0])


def flying(db: Database, webhook_id: str) -> list[str]:
    """The ids of the deliveries of ``webhook_id`` in flights: first attempts without rows."""
    with db.raw_read() as tx:
        return [
            entry[0]
            for (deliveries,) in tx.all("SELECT deliveries FROM webhook_flight")
            for entry in tx.read_json(deliveries)
            if entry[1] == webhook_id
        ]


def owed(db: Database, webhook_id: str) -> int:
    return delivery_count(db, webhook_id) + len(flying(db, webhook_id))


def delivery(db: Database, delivery_id: str) -> tuple[str, int, list[dict[str, Any]]] | None:
    with db.raw_read() as tx:
        row = tx.one(
            "SELECT status, attempts, attempt_log FROM webhook_delivery WHERE id = ?",
            (delivery_id,),
        )
        return None if row is None else (row[0], row[1], list(tx.read_json(row[2])))


def record(
    db: Database, jobs: list[queue.Job], result: queue.Result, landed: list[str]
) -> queue.Finished:
    now = utcnow()
    with db.raw_queue_unit() as (tx, main):
        outcomes = queue.prepare_outcomes(tx, [(job, result) for job in jobs], now)
        return queue.settle(tx, outcomes, landed, main=main)


OK = queue.Result(True, "succeeded", 204, None)


def test_two_passes_that_read_the_same_events_create_their_deliveries_once(
    api: Api, db: Database
) -> None:
    _payee, hook = paid_shop(api)
    first, second = plan(db), plan(db)
    assert hook in first.cursors and first.cursors == second.cursors
    created, jobs = apply(db, first)
    assert created >= 1 and {job.webhook_id for job in jobs} == {hook}
    assert apply(db, second) == (0, [])
    assert owed(db, hook) == created
    # Past the cursor written by the first: nothing new to read.
    assert hook not in plan(db).cursors


def test_an_endpoint_switched_off_between_the_read_and_the_write_gets_nothing(
    api: Api, db: Database
) -> None:
    payee, hook = paid_shop(api)
    fan_out = plan(db)
    assert fan_out.jobs[hook]
    switched = api.request("PATCH", f"/webhooks/{hook}", payee, json={"enabled": False})
    assert switched.status_code == 200, switched.text
    assert apply(db, fan_out) == (0, [])
    assert owed(db, hook) == 0


def test_deliveries_past_the_free_slots_are_written_pending_not_leased(
    api: Api, db: Database
) -> None:
    _payee, hook = paid_shop(api)
    fan_out = plan(db, slots=0)
    assert not fan_out.jobs and fan_out.pending[hook]
    created, jobs = apply(db, fan_out)
    assert jobs == [] and created == delivery_count(db, hook) >= 1
    with db.raw_read() as tx:
        row = tx.one(
            "SELECT COUNT(*) FROM webhook_delivery WHERE webhook_id = ? AND status = 'pending'"
            " AND lease_token IS NULL",
            (hook,),
        )
    assert row is not None and row[0] == created


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_on_postgresql_a_pass_keeps_the_endpoints_it_reads_from_another_process(
    api: Api, db: Database
) -> None:
    """PostgreSQL's pass builds its fan-out inside its own write transaction, the endpoints
    read locked: another process's pass meanwhile skips them, and the first writes each
    delivery once."""
    _payee, hook = paid_shop(api)
    with db.raw_queue_write() as first:
        mine = queue.plan_fan_out(first, utcnow(), slots=100, room={}, lock=True, **LEASE)
        assert mine.jobs[hook]
        with db.raw_queue_write() as second:
            # A read that waited for the first pass's locks would fail here, not hang.
            second.run("SET LOCAL lock_timeout = '2s'")
            theirs = queue.plan_fan_out(second, utcnow(), slots=100, room={}, lock=True, **LEASE)
            assert hook not in theirs.cursors
        created, jobs = queue.apply_fan_out(first, mine)
    assert created >= 1 and {job.webhook_id for job in jobs} == {hook}
    assert owed(db, hook) == created


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_claim_reads_due_deliveries_in_order_from_the_partial_index(db: Database) -> None:
    """Succeeded deliveries stay out of the due index; the claim must still find the due ones
    in order from it, not sort every pending delivery of every endpoint at each pass."""
    statement = queue._DUE.format(busy="", limit=queue.CLAIM_CANDIDATES)
    with db.raw_read() as tx:
        plan = " ".join(str(row) for row in tx.all("EXPLAIN QUERY PLAN " + statement, ("", "")))
    assert "ix_webhook_delivery_due" in plan and "TEMP B-TREE" not in plan, plan


def test_a_first_attempt_writes_its_delivery_once_with_its_outcome(api: Api, db: Database) -> None:
    _payee, hook = paid_shop(api)
    created, jobs = apply(db, plan(db))
    assert created == len(jobs) >= 1 and {job.flight for job in jobs} != {None}
    # In flight: no row yet, the flight holds the ids sent.
    assert delivery_count(db, hook) == 0
    assert sorted(flying(db, hook)) == sorted(job.delivery_id for job in jobs)
    *first, last = jobs
    if first:
        record(db, first, OK, [])
        assert flying(db, hook), "the flight stays while one of its attempts is out"
    finished = record(db, [last], OK, [last.flight or ""])
    assert finished.statuses == ["succeeded"]
    assert flying(db, hook) == []
    for job in jobs:
        found = delivery(db, job.delivery_id)
        assert found is not None
        status, attempts, log = found
        assert (status, attempts) == ("succeeded", 1)
        assert [entry["outcome"] for entry in log] == ["succeeded"]


def test_a_flight_whose_lease_ran_out_becomes_pending_deliveries_with_the_ids_sent(
    api: Api, db: Database
) -> None:
    _payee, hook = paid_shop(api)
    with db.raw_read() as tx:
        stale = queue.plan_fan_out(
            tx, utcnow(), slots=100, room={}, per_endpoint=64, lease=timedelta(seconds=-1)
        )
    _created, jobs = apply(db, stale)
    with db.raw_read() as tx:
        assert queue.any_stranded(tx, utcnow())
    with db.raw_queue_unit() as (tx, main):
        assert queue.recover(tx, utcnow(), main=main) == len(jobs)
    assert flying(db, hook) == []
    recovered = {job.delivery_id: delivery(db, job.delivery_id) for job in jobs}
    for found in recovered.values():
        assert found is not None
        status, attempts, log = found
        assert (status, attempts) == ("pending", 1)
        assert [entry["outcome"] for entry in log] == ["interrupted"]
    # The stopped process's answer, had it come after all, is not written over the retry.
    assert record(db, jobs, OK, [jobs[0].flight or ""]).statuses == [None] * len(jobs)
    assert {job.delivery_id: delivery(db, job.delivery_id) for job in jobs} == recovered
    with db.raw_read() as tx:
        assert not queue.any_stranded(tx, utcnow())


def test_an_endpoint_deleted_while_its_first_attempt_flies_gets_no_row(
    api: Api, db: Database
) -> None:
    payee, hook = paid_shop(api)
    _created, jobs = apply(db, plan(db))
    assert jobs
    assert api.request("DELETE", f"/webhooks/{hook}", payee).status_code == 204
    finished = record(db, jobs, OK, [jobs[0].flight or ""])
    assert finished.statuses == [None] * len(jobs)
    assert delivery_count(db, hook) == 0 and flying(db, hook) == []


def restarted(file: str) -> bool:
    """Whether a RESTART checkpoint of ``file`` completes within a second: a read of one of
    the app's background tasks may hold a snapshot for an instant (one CI run met one), while
    a snapshot held by the unit under test would be held for all of it."""
    for _ in range(50):
        checkpoint = sqlite3.connect(file, timeout=0)
        try:
            busy, _log, _done = checkpoint.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        finally:
            checkpoint.close()
        if busy == 0:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_on_sqlite_a_queue_write_holds_neither_the_payments_lock_nor_their_snapshot(
    api: Api, db: Database
) -> None:
    """The queue's tables have a file and a write lock of their own: while a pass's write is
    open (its reads of the endpoints and events made), a payment commits, and a RESTART
    checkpoint of the database, which waits for every reader of an old snapshot, completes
    at once; the reverse holds for the payments' writer and the queue's file."""
    paid_shop(api)
    path = db.queue_file
    assert path is not None and path.exists()
    main_file = str(db.url).removeprefix("sqlite:///")
    with db.raw_queue_unit() as (tx, main):
        assert main.all("SELECT id FROM webhook_endpoint")
        tx.run("INSERT INTO webhook_cursor (webhook_id, seq) VALUES ('whk_probe', 0)")
        payer, payee = api.user(funds=500), api.user()
        agent = api.user()
        code = api.code(agent, api.agency(payee, agent)["id"], kind="static")
        paid = api.post("/payments", payer, json={"code": code["token"], "amount": 100})
        assert paid.status_code == 201, paid.text
        assert restarted(main_file)
    with db.raw_write() as writer:
        writer.one("SELECT COUNT(*) FROM account")
        other = sqlite3.connect(str(path), timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("DELETE FROM webhook_cursor WHERE webhook_id = 'whk_probe'")
            other.execute("COMMIT")
        finally:
            other.close()
        assert restarted(str(path))
