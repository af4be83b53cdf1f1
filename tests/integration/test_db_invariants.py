"""The database itself refuses what would lose or double money, even from code that
bypasses the application: each bypass below is a raw statement the schema must reject."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from models.db import Database
from tests.api import Api

PAYMENT_COLUMNS = (
    "status, amount, refunded_amount, payer_id, payee_id, agent_id, agency_id, code_id, "
    "code_kind, code_label, items, memo, receipt, created_at"
)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url, pool_size=1)
    yield database
    database.dispose()


def rejected(db: Database, statement: str, **params: Any) -> None:
    with pytest.raises(IntegrityError), db.write() as session:
        session.connection().execute(text(statement), params)


def test_a_balance_cannot_be_made_negative_behind_the_ledger(api: Api, db: Database) -> None:
    """UPDATE account SET balance = -1 is refused by a CHECK: no code path can overdraw."""
    user = api.user(funds=100)
    rejected(db, "UPDATE account SET balance = -1 WHERE id = :id", id=user.account_id)
    assert api.get("/me", user).json()["balance"] == 100


def test_a_dynamic_code_cannot_get_a_second_payment_row(api: Api, db: Database) -> None:
    """A copy of a dynamic code's payment under a new id breaks the unique index on
    payment.code_id for dynamic codes, so a dynamic code is paid at most once."""
    payee, agent = api.user(), api.user()
    code = api.code(agent, api.agency(payee, agent)["id"], "dynamic", amount=100)
    payer = api.user(funds=100)
    paid = api.post("/payments", payer, json={"code": code["token"]})
    assert paid.status_code == 201
    rejected(
        db,
        f"INSERT INTO payment (id, {PAYMENT_COLUMNS}) "
        f"SELECT 'pay_second_copy', {PAYMENT_COLUMNS} FROM payment WHERE id = :id",
        id=paid.json()["id"],
    )


def test_payment_amounts_are_positive_and_refunds_stay_within_them(api: Api, db: Database) -> None:
    """CHECKs on payment: amount > 0, 0 <= refunded_amount <= amount; and a refund row of
    zero is refused too."""
    payer, payee = api.user(funds=100), api.user()
    payment_id = api.post("/payments", payer, json={"payee": payee.handle, "amount": 100}).json()[
        "id"
    ]
    rejected(db, "UPDATE payment SET amount = 0, refunded_amount = 0 WHERE id = :id", id=payment_id)
    rejected(db, "UPDATE payment SET refunded_amount = 101 WHERE id = :id", id=payment_id)
    rejected(db, "UPDATE payment SET refunded_amount = -1 WHERE id = :id", id=payment_id)
    rejected(
        db,
        "INSERT INTO refund (id, payment_id, amount, created_by_id, created_at) "
        "VALUES ('ref_zero', :pid, 0, :by, CURRENT_TIMESTAMP)",
        pid=payment_id,
        by=payee.account_id,
    )


def test_an_account_cannot_get_two_events_with_one_seq(api: Api, db: Database) -> None:
    """(account_id, seq) is the primary key of the outbox: a second event 1 is refused, so
    a client replaying by seq can never miss or double one."""
    user = api.user(funds=100)
    rejected(
        db,
        "INSERT INTO event (account_id, seq, type, data, created_at) "
        "VALUES (:id, 1, 'deposit.succeeded', '{}', CURRENT_TIMESTAMP)",
        id=user.account_id,
    )
