"""The queue's fan-out is read outside the write lock and written after it
(``models.webhook_queue.plan_fan_out`` / ``apply_fan_out``): two passes that read the same
new events, or a pass whose endpoint changed in between, must never create a delivery twice
or for an endpoint switched off. Both databases, the real schema, no worker running."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta

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
    with db.raw_write() as tx:
        return queue.apply_fan_out(tx, fan_out)


def delivery_count(db: Database, webhook_id: str) -> int:
    with db.raw_read() as tx:
        row = tx.one("SELECT COUNT(*) FROM webhook_delivery WHERE webhook_id = ?", (webhook_id,))
    assert row is not None
    return int(row[0])


def test_two_passes_that_read_the_same_events_create_their_deliveries_once(
    api: Api, db: Database
) -> None:
    _payee, hook = paid_shop(api)
    first, second = plan(db), plan(db)
    assert hook in first.cursors and first.cursors == second.cursors
    created, jobs = apply(db, first)
    assert created >= 1 and {job.webhook_id for job in jobs} == {hook}
    assert apply(db, second) == (0, [])
    assert delivery_count(db, hook) == created
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
    assert delivery_count(db, hook) == 0


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
    with db.raw_write() as first:
        mine = queue.plan_fan_out(first, utcnow(), slots=100, room={}, lock=True, **LEASE)
        assert mine.jobs[hook]
        with db.raw_write() as second:
            # A read that waited for the first pass's locks would fail here, not hang.
            second.run("SET LOCAL lock_timeout = '2s'")
            theirs = queue.plan_fan_out(second, utcnow(), slots=100, room={}, lock=True, **LEASE)
            assert hook not in theirs.cursors
        created, jobs = queue.apply_fan_out(first, mine)
    assert created >= 1 and {job.webhook_id for job in jobs} == {hook}
    assert delivery_count(db, hook) == created
