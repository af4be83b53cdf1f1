"""Payments by a static code the process has paid by before (``models.codes.KnownCodes``):
on PostgreSQL such a payment is one statement, the limiter's read, the check of the cached
facts and the payment together; everything that can change is still decided under the locks,
and a code whose facts changed is read again. The same answers on SQLite, which reads the
code inside its own transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text

from app.settings import Settings
from models import awaited, shortcodes
from models.db import Database
from models.pg_group import PgGroup
from tests.api import Api, User
from tests.conftest import app_settings

PER_ACCOUNT = 3


@pytest.fixture
def settings(database_url: str) -> Settings:
    return app_settings(database_url, lookup_failures_per_account=PER_ACCOUNT)


def shop(api: Api) -> tuple[User, User, dict[str, Any], dict[str, Any]]:
    payee, agent = api.user(), api.user()
    agency = api.agency(payee, agent)
    return payee, agent, agency, api.code(agent, agency["id"], "static", label="Till 1")


def pay(api: Api, payer: User, code: str, key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    return api.post("/payments", payer, json={"code": code, "amount": 100}, headers=headers)


def balance(api: Api, user: User) -> int:
    return int(api.get("/me", user).json()["balance"])


@contextmanager
def statements_sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every statement the money path's asyncpg connections send, in order: a unit's own and
    those its group commits with others'."""
    sent: list[str] = []
    execute = awaited.AsyncpgCursor.execute
    grouped = PgGroup.one

    def counted(self: awaited.AsyncpgCursor, statement: str, params: Any = ()) -> None:
        sent.append(statement)
        execute(self, statement, params)

    async def counted_in_group(self: PgGroup, statement: str, params: Any, **locks: Any) -> Any:
        sent.append(statement)
        return await grouped(self, statement, params, **locks)

    with monkeypatch.context() as patched:
        patched.setattr(awaited.AsyncpgCursor, "execute", counted)
        patched.setattr(PgGroup, "one", counted_in_group)
        yield sent


def sending(sent: list[str], request: Callable[[], Any]) -> tuple[Any, list[str]]:
    """What ``request`` was answered, and the statements it sent."""
    sent.clear()
    answer = request()
    return answer, list(sent)


# SQLite has no round trips to save: its payment is a unit of the group commit.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_static_code_paid_before_is_paid_in_one_statement(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first payment by a static code reads the code, then pays (two statements); every
    later one is one, with the same payment, receipt and events; a replay of its key answers
    the stored response."""
    payee, agent, _, code = shop(api)
    payer = api.user(funds=1_000)
    with statements_sent(monkeypatch) as sent:
        first, statements = sending(sent, lambda: pay(api, payer, code["token"], key="k1"))
        assert first.status_code == 201 and len(statements) == 2, first.text
        second, statements = sending(sent, lambda: pay(api, payer, code["token"], key="k2"))
        assert second.status_code == 201, second.text
        assert len(statements) == 1 and "paycode_pay" in statements[0]
        replay, statements = sending(sent, lambda: pay(api, payer, code["token"], key="k2"))
        assert replay.json() == second.json() and len(statements) == 1
    body = second.json()
    assert body["payee"]["handle"] == payee.handle and body["agent"]["handle"] == agent.handle
    assert body["code_id"] == code["id"] and body["code_label"] == "Till 1"
    check = api.post("/receipts/verify", payer, json={"receipt": body["receipt"]})
    assert check.json() == {"valid": True, "payment": body}
    events = api.get("/events", payee).json()["data"]
    assert [e["data"]["id"] for e in events if e["type"] == "payment.succeeded"] == [
        first.json()["id"],
        body["id"],
    ]
    assert balance(api, payer) == 800 and balance(api, payee) == 200


def test_a_known_code_cancelled_or_whose_agency_is_revoked_is_refused(api: Api) -> None:
    """What can change is decided under the locks, not by what the process remembers."""
    payee, agent, agency, code = shop(api)
    payer = api.user(funds=1_000)
    assert pay(api, payer, code["token"]).status_code == 201
    assert api.post(f"/codes/{code['id']}/cancel", agent).status_code == 200
    refused = pay(api, payer, code["token"])
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "code_cancelled"

    other = api.code(agent, agency["id"], "static")
    assert pay(api, payer, other["short_code"]).status_code == 201
    assert api.post(f"/agencies/{agency['id']}/revoke", payee).status_code == 200
    refused = pay(api, payer, other["short_code"])
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "agency_revoked"
    assert balance(api, payer) == 800


def test_a_known_code_whose_party_was_renamed_is_read_again(api: Api, database_url: str) -> None:
    """The receipt and the views show the parties as they are: a name changed in the
    database since the code was remembered sends the payment down the path that reads it."""
    payee, _, _, code = shop(api)
    payer = api.user(funds=1_000)
    assert pay(api, payer, code["token"]).json()["payee"]["display_name"] == payee.handle.title()
    db = Database(database_url, pool_size=1)
    try:
        with db.write() as session:
            session.execute(
                text("UPDATE account SET display_name = 'Renamed Shop' WHERE id = :id"),
                {"id": payee.account_id},
            )
    finally:
        db.dispose()
    for _ in range(2):
        renamed = pay(api, payer, code["token"])
        assert renamed.status_code == 201, renamed.text
        assert renamed.json()["payee"]["display_name"] == "Renamed Shop"
    assert balance(api, payee) == 300


def test_the_limiter_stops_a_guesser_on_a_known_code_too(api: Api) -> None:
    """A caller over the limit of unknown codes gets 429 on a code it paid by before: the
    limiter's read rides in the one statement and is judged first."""
    _, _, _, code = shop(api)
    payer = api.user(funds=1_000)
    assert pay(api, payer, code["token"]).status_code == 201
    for _ in range(PER_ACCOUNT):
        guessed = pay(api, payer, shortcodes.display(shortcodes.generate()))
        assert guessed.status_code == 404
    limited = pay(api, payer, code["token"])
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert balance(api, payer) == 900
