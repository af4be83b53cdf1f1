"""Issuing codes for an agency the process has issued for before (``models.issuance``): on
PostgreSQL such an issue is one statement, the agency's check under its row lock, the code and
the Idempotency-Key's record together; an agency found changed is read again, and what can
change (its status) is decided under the lock. The same answers on SQLite, which issues in its
group commit's transaction."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from models import agencies, codes, idempotency
from models.clock import utcnow
from models.db import Database
from tests.api import Api, User
from tests.integration.test_known_codes import sending, statements_sent


def issue(api: Api, user: User, agency_id: str, key: str | None = None, **body: Any) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    body = {"agency_id": agency_id, "kind": "dynamic", "amount": 1250, **body}
    return api.post("/codes", user, json=body, headers=headers)


def sql(database_url: str, statement: str, **params: Any) -> None:
    db = Database(database_url, pool_size=1)
    try:
        with db.write() as session:
            session.execute(text(statement), params)
    finally:
        db.dispose()


# SQLite has no round trips to save: its issue is a unit of the group commit.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_code_for_a_known_agency_is_issued_in_one_statement(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first code of an agency reads the agency, then issues (two statements); every later
    one is one statement, with or without a key, and a replay of the key is one statement
    answering the stored response."""
    payee, agent = api.user(), api.user()
    agency = api.agency(payee, agent)
    with statements_sent(monkeypatch) as sent:
        first, statements = sending(sent, lambda: issue(api, agent, agency["id"]))
        assert first.status_code == 201 and len(statements) == 2, first.text
        second, statements = sending(sent, lambda: issue(api, agent, agency["id"], label="Till 2"))
        assert second.status_code == 201, second.text
        assert len(statements) == 1 and "INSERT INTO code" in statements[0]
        keyed, statements = sending(sent, lambda: issue(api, payee, agency["id"], key="k1"))
        assert keyed.status_code == 201 and len(statements) == 1, keyed.text
        replay, statements = sending(sent, lambda: issue(api, payee, agency["id"], key="k1"))
        assert replay.json() == keyed.json() and len(statements) == 1
    body = second.json()
    assert body["payee"]["handle"] == payee.handle and body["agent"]["handle"] == agent.handle
    assert body["label"] == "Till 2" and body["status"] == "active"
    assert api.get(f"/codes/{body['id']}", agent).json() == body
    shown = {c["id"] for c in api.get("/codes", payee).json()["data"]}
    assert shown == {first.json()["id"], body["id"], keyed.json()["id"]}


def test_a_known_agency_whose_party_was_renamed_is_read_again(api: Api, database_url: str) -> None:
    payee, agent = api.user(), api.user()
    agency = api.agency(payee, agent)
    assert issue(api, agent, agency["id"]).status_code == 201
    sql(
        database_url,
        "UPDATE account SET display_name = 'Renamed Shop' WHERE id = :id",
        id=payee.account_id,
    )
    for _ in range(2):
        renamed = issue(api, agent, agency["id"])
        assert renamed.status_code == 201, renamed.text
        assert renamed.json()["payee"]["display_name"] == "Renamed Shop"


def test_a_known_agency_revoked_refuses_and_the_refusal_is_kept_under_the_key(
    api: Api,
) -> None:
    payee, agent = api.user(), api.user()
    agency = api.agency(payee, agent)
    assert issue(api, agent, agency["id"]).status_code == 201
    assert api.post(f"/agencies/{agency['id']}/revoke", payee).status_code == 200
    for _ in range(2):
        refused = issue(api, agent, agency["id"], key="after-revoke")
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "agency_revoked"
    stranger = api.user()
    unknown = issue(api, stranger, agency["id"])
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "agency_id"


def test_an_issue_waits_for_a_revoke_in_flight_and_is_refused(api: Api, database_url: str) -> None:
    """The agency's row lock orders an issue after a revoke that holds it: the issue waits for
    the revoke to commit and then sees it, so no active code is added to a revoked agency
    (the revoke's own pass over the agency's codes has already run)."""
    payee, agent = api.user(), api.user()
    agency = api.agency(payee, agent)
    assert issue(api, agent, agency["id"]).status_code == 201
    outcome: list[Any] = []
    racer = threading.Thread(target=lambda: outcome.append(issue(api, agent, agency["id"])))
    db = Database(database_url, pool_size=1)
    try:
        with db.write() as session:
            agencies.revoke(session, payee.account_id, agency["id"])
            codes.revoke_unpaid_of_agency(session, agency["id"])
            racer.start()
            racer.join(0.5)
            # SQLite: the group writer waits for the write lock this transaction holds.
            assert racer.is_alive(), "the issue must wait for the revoke"
        racer.join(30)
    finally:
        db.dispose()
    assert len(outcome) == 1
    refused = outcome[0]
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "agency_revoked"
    statuses = {c["status"] for c in api.get("/codes", payee).json()["data"]}
    assert statuses == {"revoked"}


@pytest.mark.parametrize("route", ["/codes", "/payments"])
def test_a_key_past_its_time_is_used_afresh(api: Api, database_url: str, route: str) -> None:
    """A key's record older than the 24 hours it is kept answers nothing: the request runs
    again and its new response is recorded in place of the old one."""
    payee, agent = api.user(), api.user()
    agency = api.agency(payee, agent)
    code = api.code(agent, agency["id"], "static")
    payer = api.user(funds=1_000)

    def send() -> Any:
        if route == "/codes":
            return issue(api, agent, agency["id"], key="again")
        body = {"code": code["token"], "amount": 100}
        return api.post("/payments", payer, json=body, headers={"Idempotency-Key": "again"})

    first = send()
    assert first.status_code == 201, first.text
    assert send().json() == first.json()
    long_ago = utcnow() - idempotency.TTL - timedelta(minutes=1)
    sql(
        database_url,
        'UPDATE idempotency_record SET created_at = :at WHERE "key" = :key',
        at=long_ago,
        key="again",
    )
    fresh = send()
    assert fresh.status_code == 201, fresh.text
    assert fresh.json()["id"] != first.json()["id"]
    assert send().json() == fresh.json()
