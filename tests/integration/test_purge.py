"""No table grows for ever: Idempotency-Key records past 24 h and limiter rows past their 15
minutes are purged in small batches, by a background pass in every serving process and by
``paycode purge``; nothing inside its window is touched, so a retry within 24 h still replays.
On both databases."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from models import purge
from models.clock import utcnow
from models.db import Database
from tests.api import Api, User
from tests.conftest import ADMIN_TOKEN
from tests.server import ROOT


def age_rows(db: Database, table: str, where: str, by: timedelta, **params: Any) -> int:
    """Move matching rows' created_at back in time, as if they had been written long ago."""
    with db.write() as session:
        rows = session.execute(
            text(f"SELECT created_at FROM {table} WHERE {where}"), params
        ).fetchall()
        result = session.execute(
            text(f"UPDATE {table} SET created_at = :moment WHERE {where}").bindparams(
                moment=utcnow() - by
            ),
            params,
        )
        assert result.rowcount == len(rows)
        return int(result.rowcount)


def count(db: Database, table: str, where: str = "1 = 1", **params: Any) -> int:
    with db.read() as session:
        found = session.execute(text(f"SELECT COUNT(*) FROM {table} WHERE {where}"), params)
        return int(found.scalar())


def old_records(db: Database, account_id: str, how_many: int) -> None:
    """Stored Idempotency-Key responses made 25 hours ago, as a busy shop leaves behind."""
    moment = utcnow() - timedelta(hours=25)
    with db.write() as session:
        session.execute(
            text(
                "INSERT INTO idempotency_record"
                ' (account_id, scope, "key", request_hash, status_code, response, created_at)'
                " VALUES (:account, 'payments', :key, 'h', 201, NULL, :moment)"
            ).bindparams(moment=moment),
            [{"account": account_id, "key": f"old-{i}"} for i in range(how_many)],
        )


def pay(api: Api, payer: User, payee: User, key: str, amount: int = 100) -> httpx.Response:
    return api.post(
        "/payments",
        payer,
        json={"payee": payee.handle, "amount": amount},
        headers={"Idempotency-Key": key},
    )


@pytest.fixture
def db(settings: Settings) -> Any:
    database = Database(settings.database_url, pool_size=2)
    yield database
    database.dispose()


def test_a_purge_removes_rows_past_their_windows_and_keeps_the_rest(api: Api, db: Database) -> None:
    """Keys older than 24 h, login failures and code-lookup failures older than 15 minutes
    are removed (in batches of 2 here); a key inside its window still replays the first
    response without a second payment, and recent limiter rows still count."""
    payer, payee = api.user(funds=10_000), api.user()
    first_old = pay(api, payer, payee, "key-yesterday")
    recent = pay(api, payer, payee, "key-today")
    assert first_old.status_code == recent.status_code == 201
    by_key = '"key" = :key'
    age_rows(db, "idempotency_record", by_key, timedelta(hours=24, minutes=1), key="key-yesterday")
    age_rows(db, "idempotency_record", by_key, timedelta(hours=23, minutes=59), key="key-today")
    for _ in range(3):
        wrong = api.post("/sessions", json={"handle": payer.handle, "password": "wrong password"})
        assert wrong.status_code == 401
        assert api.get("/scan/ZZZZ-ZZZZ-ZZ", payer).status_code == 404
    age_rows(db, "login_failure", "1 = 1", timedelta(minutes=16))
    age_rows(db, "lookup_failure", "1 = 1", timedelta(minutes=16))
    # Recent failures, of another account: a lookup failure also drops its own account's
    # expired ones as it is counted.
    wrong = api.post("/sessions", json={"handle": payee.handle, "password": "wrong password"})
    assert wrong.status_code == 401
    assert api.get("/scan/ZZZZ-ZZZZ-ZZ", payee).status_code == 404

    removed = purge.purge(db, batch=2, pause=0)

    assert removed == {
        "idempotency_record": 1,
        "login_failure": 3,
        "lookup_failure": 3,
        "webhook_delivery": 0,
    }
    assert count(db, "idempotency_record", '"key" = :key', key="key-yesterday") == 0
    assert count(db, "idempotency_record", '"key" = :key', key="key-today") == 1
    assert count(db, "login_failure") == 1
    assert count(db, "lookup_failure") == 1
    replay = pay(api, payer, payee, "key-today")
    assert replay.status_code == 201
    assert replay.json()["id"] == recent.json()["id"]
    assert api.get("/me", payer).json()["balance"] == 10_000 - 200
    assert set(purge.purge(db).values()) == {0}


def test_finished_webhook_deliveries_go_after_30_days_and_pending_ones_stay(
    api: Api, db: Database
) -> None:
    """A delivery that succeeded or failed for good more than 30 days ago is removed; one
    finished 29 days ago, and a pending one of any age (still owed), are kept."""
    owner = api.user()
    now = utcnow()
    with db.write() as session:
        session.execute(
            text(
                "INSERT INTO webhook_endpoint (id, account_id, url, events, description, enabled,"
                " secret, start_seq, enabled_at, created_at, updated_at) VALUES ('whe_purge',"
                " :account, 'https://pos.example/hook', '[]', NULL, :on, 'whsec_x', 0, :at, :at,"
                " :at)"
            ).bindparams(at=now),
            {"account": owner.account_id, "on": True},
        )
    # The queue's own transaction: on SQLite its tables are in a file of their own.
    with db.queue_write() as session:
        ages = {
            "old-ok": ("succeeded", 31),
            "old-failed": ("failed", 31),
            "old-pending": ("pending", 31),
            "recent-ok": ("succeeded", 29),
        }
        for delivery_id, (status, days) in ages.items():
            session.execute(
                text(
                    "INSERT INTO webhook_delivery (id, webhook_id, account_id, type, seq, status,"
                    " attempts, created_at, attempt_log) VALUES (:id, 'whe_purge', :account,"
                    " 'payment.succeeded', :seq, :status, 1, :at, '[]')"
                ).bindparams(at=now - timedelta(days=days)),
                {
                    "id": delivery_id,
                    "account": owner.account_id,
                    "seq": len(delivery_id),
                    "status": status,
                },
            )

    removed = purge.purge(db)

    assert removed is not None and removed["webhook_delivery"] == 2
    with db.read() as session:
        kept = session.execute(text("SELECT id FROM webhook_delivery ORDER BY id")).scalars()
        assert list(kept) == ["old-pending", "recent-ok"]


def test_two_purges_at_once_remove_each_row_once_and_payments_go_on(
    api: Api, settings: Settings
) -> None:
    """Two processes' passes (two pools) over 3,000 expired records at once: every row is
    removed exactly once (on PostgreSQL one pass holds the lock and the other skips), and
    payments made meanwhile all succeed before the purge is over, never waiting for it."""
    payer, payee = api.user(funds=100_000), api.user()
    setup = Database(settings.database_url, pool_size=1)
    old_records(setup, payer.account_id, 3000)
    setup.dispose()
    results: list[dict[str, int] | None] = []
    finished_at: list[float] = []

    def one_process() -> None:
        database = Database(settings.database_url, pool_size=1)
        try:
            results.append(purge.purge(database, batch=50, pause=0.01))
            finished_at.append(time.monotonic())
        finally:
            database.dispose()

    threads = [threading.Thread(target=one_process) for _ in range(2)]
    for thread in threads:
        thread.start()
    paid_at = []
    for i in range(10):
        assert pay(api, payer, payee, f"during-{i}").status_code == 201
        paid_at.append(time.monotonic())
    for thread in threads:
        thread.join(timeout=120)
    passes = [result for result in results if result is not None]
    assert sum(result["idempotency_record"] for result in passes) == 3000
    if not api.client.app.state.paycode.db.is_sqlite:
        assert len(passes) == 1 and results.count(None) == 1
    assert max(paid_at) < max(finished_at), "the payments waited for the whole purge"
    check = Database(settings.database_url, pool_size=1)
    try:
        assert count(check, "idempotency_record", '"key" LIKE :p', p="old-%") == 0
        assert count(check, "idempotency_record", '"key" LIKE :p', p="during-%") == 10
    finally:
        check.dispose()


def test_the_serving_process_purges_by_itself_and_metrics_say_so(settings: Settings) -> None:
    """A serving process's background pass removes expired rows without being asked, and
    /metrics shows the rows removed by table and the oldest kept key's age (under 24 h)."""
    with TestClient(
        create_app(replace(settings, purge_interval=0.3), migrate_schema=False)
    ) as client:
        api = Api(client, ADMIN_TOKEN)
        payer, payee = api.user(funds=1_000), api.user()
        assert pay(api, payer, payee, "kept").status_code == 201
        state = client.app.state.paycode  # type: ignore[attr-defined]
        old_records(state.db, payer.account_id, 5)
        deadline = time.monotonic() + 15
        while count(state.db, "idempotency_record") > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert count(state.db, "idempotency_record") == 1
        time.sleep(0.5)
        metrics = client.get("/metrics").text
    removed = re.search(
        r'^paycode_purged_rows_total\{table="idempotency_record"\} (\S+)', metrics, re.M
    )
    assert removed is not None and float(removed.group(1)) >= 5
    age = re.search(r"^paycode_idempotency_oldest_record_age_seconds (\S+)", metrics, re.M)
    assert age is not None and 0 <= float(age.group(1)) < 24 * 3600


def test_paycode_purge_prints_what_it_removed(settings: Settings, api: Api) -> None:
    """The CLI runs one pass by hand and says how many rows of each table went."""
    payer = api.user()
    setup = Database(settings.database_url, pool_size=1)
    old_records(setup, payer.account_id, 7)
    setup.dispose()
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "purge", "--database-url", settings.database_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "removed 7 idempotency_record rows" in done.stdout
