"""Spec §7 (C2, C4, C5, C6, C8): payments by code and direct, every error code a payer or
refunder can meet, visibility, refunds, the CSV export, the per-agent report and signed
receipts — on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlmodel import Session
from starlette.testclient import TestClient

from app.cli import main as cli
from app.main import create_app
from app.settings import Settings
from models import agencies, codes, receipts
from models.accounts import Account
from models.db import Database
from tests.api import Api, User
from tests.conftest import ADMIN_TOKEN

PAYMENT_FIELDS = {
    "id", "status", "amount", "refunded_amount", "currency", "payer", "payee", "agent",
    "code_id", "code_kind", "code_label", "items", "memo", "created_at", "receipt",
}  # fmt: skip
CSV_HEADER = (
    "id,created_at,status,amount,refunded_amount,currency,payer,payee,agent,code_id,code_label,memo"
)


@contextmanager
def database(database_url: str) -> Iterator[Session]:
    """A write transaction straight on the test database, to reach states (time passing,
    a pending agency) that the API cannot make without waiting."""
    db = Database(database_url, pool_size=1)
    try:
        with db.write() as session:
            yield session
    finally:
        db.dispose()


def error_of(response: Any) -> str:
    return str(response.json()["error"]["code"])


def pay(api: Api, payer: User, key: str | None = None, **body: Any) -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return api.post("/payments", payer, json=body, headers=headers)


def paid(api: Api, payer: User, **body: Any) -> dict[str, Any]:
    response = pay(api, payer, **body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def balance(api: Api, user: User) -> int:
    return int(api.get("/me", user).json()["balance"])


def shop(api: Api, *, can_refund: bool = False) -> tuple[User, User, dict[str, Any]]:
    payee, agent = api.user(), api.user()
    return payee, agent, api.agency(payee, agent, can_refund=can_refund, label="Counter 1")


def party(user: User) -> dict[str, str]:
    return {"handle": user.handle, "display_name": user.handle.title()}


# --- paying -----------------------------------------------------------------------------------


def test_direct_payment_moves_money_and_returns_the_payment(api: Api) -> None:
    """A direct payment to a handle (C2) is 201 with the full payment object; the payer is
    debited and the payee credited by exactly the amount."""
    payer, payee = api.user(funds=5000), api.user()
    body = paid(api, payer, payee=payee.handle.upper(), amount=1250, memo="rent share")
    assert set(body) == PAYMENT_FIELDS
    assert body["status"] == "succeeded" and body["amount"] == 1250
    assert body["refunded_amount"] == 0 and body["currency"] == "CNY"
    assert body["payer"] == party(payer) and body["payee"] == party(payee)
    assert body["agent"] is None and body["code_id"] is None and body["code_kind"] is None
    assert body["code_label"] is None and body["items"] == [] and body["memo"] == "rent share"
    assert body["created_at"].endswith("Z") and body["id"].startswith("pay_")
    assert balance(api, payer) == 3750 and balance(api, payee) == 1250


def test_dynamic_code_paid_by_typed_short_code_carries_the_sale_and_is_paid_once(
    api: Api,
) -> None:
    """A dynamic code typed the way a person types (lower case, spaces, O for 0) pays its own
    amount; the payment shows agent, code, label and items (C5, C8); a second payment of
    the code is 409 code_already_paid and moves no money."""
    payee, agent, agency = shop(api)
    items = [{"name": "Tea", "quantity": 2, "unit_amount": 350}]
    code = api.code(agent, agency["id"], "dynamic", items=items, label="Table 4", memo="lunch")
    typed = code["short_code"].lower().replace("-", " ").replace("0", "o")
    payer = api.user(funds=1000)
    body = paid(api, payer, code=typed)
    assert body["amount"] == 700 and body["items"] == items and body["memo"] == "lunch"
    assert body["agent"] == party(agent) and body["payee"] == party(payee)
    assert (body["code_id"], body["code_kind"], body["code_label"]) == (
        code["id"],
        "dynamic",
        "Table 4",
    )
    shown = api.get(f"/codes/{code['id']}", agent).json()
    assert shown["status"] == "paid" and shown["paid_payment_id"] == body["id"]
    again = pay(api, api.user(funds=1000), code=code["token"])
    assert again.status_code == 409 and error_of(again) == "code_already_paid"
    assert balance(api, payee) == 700 and balance(api, payer) == 300


def test_static_code_takes_the_typed_amount_and_serves_many_payments(api: Api) -> None:
    """A static code without an amount needs one (422 amount_required) and then pays what
    the payer typed, as often as payers come (C8)."""
    payee, agent, agency = shop(api)
    code = api.code(agent, agency["id"], "static")
    payer = api.user(funds=1000)
    missing = pay(api, payer, code=code["token"])
    assert missing.status_code == 422 and error_of(missing) == "amount_required"
    assert missing.json()["error"]["field"] == "amount"
    assert paid(api, payer, code=code["token"], amount=120)["amount"] == 120
    assert paid(api, payer, code=code["short_code"], amount=80)["code_kind"] == "static"
    assert balance(api, payee) == 200


def test_a_code_with_a_fixed_amount_refuses_another_amount(api: Api) -> None:
    """A code that fixes its amount (dynamic, or static with one) is 422 amount_mismatch for
    any other amount, and pays its own amount when the same or none is given."""
    _payee, agent, agency = shop(api)
    payer = api.user(funds=10_000)
    dynamic = api.code(agent, agency["id"], "dynamic", amount=500)
    fixed = api.code(agent, agency["id"], "static", amount=300)
    for code in (dynamic, fixed):
        wrong = pay(api, payer, code=code["token"], amount=code["amount"] + 1)
        assert wrong.status_code == 422 and error_of(wrong) == "amount_mismatch"
    assert paid(api, payer, code=dynamic["token"], amount=500)["amount"] == 500
    assert paid(api, payer, code=fixed["token"])["amount"] == 300


def test_insufficient_funds_is_409_and_changes_nothing(api: Api) -> None:
    """Paying more than the balance is 409 insufficient_funds: no payment, no money moved,
    and a dynamic code stays payable."""
    _payee, agent, agency = shop(api)
    code = api.code(agent, agency["id"], "dynamic", amount=500)
    payer = api.user(funds=499)
    for body in ({"code": code["token"]}, {"payee": agent.handle, "amount": 500}):
        response = pay(api, payer, **body)
        assert response.status_code == 409 and error_of(response) == "insufficient_funds"
    assert balance(api, payer) == 499
    assert api.get(f"/codes/{code['id']}", agent).json()["status"] == "active"
    assert api.get("/payments", payer).json()["data"] == []


def test_paying_oneself_is_422_self_payment(api: Api) -> None:
    """The payee cannot pay itself, neither directly nor through its own code."""
    payee, agent, agency = shop(api)
    api.deposit(payee.handle, 1000)
    code = api.code(agent, agency["id"], "dynamic", amount=100)
    for body in ({"payee": payee.handle, "amount": 100}, {"code": code["token"]}):
        response = pay(api, payee, **body)
        assert response.status_code == 422 and error_of(response) == "self_payment"
        assert response.json()["error"]["field"] in body
    assert balance(api, payee) == 1000


def test_an_agent_may_pay_through_its_own_code(api: Api) -> None:
    """The clerk is not the payee, so it may pay through its own counter's code; it gets
    one payment.succeeded event although it is both payer and agent."""
    payee, agent, agency = shop(api)
    api.deposit(agent.handle, 1000)
    code = api.code(agent, agency["id"], "dynamic", amount=100)
    paid(api, agent, code=code["token"])
    types = [e["type"] for e in api.get("/events", agent).json()["data"]]
    assert types.count("payment.succeeded") == 1 and types.count("code.paid") == 1
    assert balance(api, payee) == 100


def test_unusable_codes_say_why(api: Api, database_url: str) -> None:
    """Expired → 409 code_expired; cancelled → code_cancelled; its agency revoked →
    agency_revoked; its agency pending → agency_not_active; unknown → 404 on field code."""
    payee, agent, agency = shop(api)
    payer = api.user(funds=10_000)
    expired = api.code(agent, agency["id"], "dynamic", amount=100)
    cancelled = api.code(agent, agency["id"], "dynamic", amount=100)
    with database(database_url) as session:
        row = session.get(codes.Code, expired["id"])
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(row)
    assert api.post(f"/codes/{cancelled['id']}/cancel", agent).status_code == 200
    for code, expected in ((expired, "code_expired"), (cancelled, "code_cancelled")):
        response = pay(api, payer, code=code["token"])
        assert response.status_code == 409 and error_of(response) == expected

    other_agent = api.user()
    pending = api.agency(payee, other_agent)
    static = api.code(other_agent, pending["id"], "static")
    with database(database_url) as session:
        row = session.get(agencies.Agency, pending["id"])
        assert row is not None
        row.status = agencies.PENDING
        session.add(row)
    response = pay(api, payer, code=static["token"], amount=100)
    assert response.status_code == 409 and error_of(response) == "agency_not_active"

    revoked = api.code(agent, agency["id"], "static")
    assert api.post(f"/agencies/{agency['id']}/revoke", payee).status_code == 200
    response = pay(api, payer, code=revoked["token"], amount=100)
    assert response.status_code == 409 and error_of(response) == "agency_revoked"

    unknown = pay(api, payer, code="0000-0000-00")
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "code"
    assert balance(api, payer) == 10_000


@pytest.mark.parametrize(
    "body,field",
    [
        ({"payee": "nobody-here", "amount": 100}, "payee"),
        ({"payee": "PAYEE", "amount": 0}, "amount"),
        ({"payee": "PAYEE", "amount": -5}, "amount"),
        ({"payee": "PAYEE", "amount": 1.5}, "amount"),
        ({"payee": "PAYEE", "amount": "100"}, "amount"),
        ({"payee": "PAYEE", "amount": True}, "amount"),
        ({"payee": "PAYEE", "amount": 10**12 + 1}, "amount"),
        ({"payee": "PAYEE"}, "amount"),
        ({"payee": "PAYEE", "amount": 5, "code": "X"}, "code"),
        ({"amount": 5}, "code"),
        ({"code": 12345}, "code"),
        ({"payee": "PAYEE", "amount": 5, "memo": "x" * 501}, "memo"),
        ({"payee": 7, "amount": 5}, "payee"),
    ],
)
def test_bad_payment_bodies_are_clear_4xx(api: Api, body: dict[str, Any], field: str) -> None:
    """Every malformed payment names the field at fault, never a 500, and moves no money;
    an unknown payee handle is 404 not_found."""
    payer, payee = api.user(funds=1000), api.user()
    body = {k: payee.handle if v == "PAYEE" else v for k, v in body.items()}
    response = pay(api, payer, **body)
    assert response.status_code in (404, 422), response.text
    assert response.json()["error"]["field"] == field
    assert balance(api, payer) == 1000


def test_payments_need_a_logged_in_account_and_readable_json(api: Api) -> None:
    """No token → 401 unauthorized; a body that is not JSON → 400."""
    anonymous = api.post("/payments", json={"payee": "x", "amount": 1})
    assert anonymous.status_code == 401 and error_of(anonymous) == "unauthorized"
    payer = api.user()
    broken = api.post("/payments", payer, content=b"{nope", headers={"Content-Type": "x"})
    assert broken.status_code == 400


# --- idempotency ------------------------------------------------------------------------------


def test_idempotency_key_replays_the_first_response_and_refuses_another_body(api: Api) -> None:
    """The same key and body return the first 201 unchanged and pay once; the same key with
    another body is 422 idempotency_key_reused; another key pays again."""
    payer, payee = api.user(funds=1000), api.user()
    first = pay(api, payer, "k-1", payee=payee.handle, amount=100)
    replay = pay(api, payer, "k-1", payee=payee.handle, amount=100)
    assert first.status_code == replay.status_code == 201
    assert first.json() == replay.json()
    reused = pay(api, payer, "k-1", payee=payee.handle, amount=101)
    assert reused.status_code == 422 and error_of(reused) == "idempotency_key_reused"
    assert pay(api, payer, "k-2", payee=payee.handle, amount=100).status_code == 201
    assert balance(api, payer) == 800


def test_idempotency_key_replays_a_refusal_too(api: Api) -> None:
    """A refused payment is stored under its key: after money arrives, the replay still
    answers the first 409, so a retry never pays unexpectedly late."""
    payer, payee = api.user(), api.user()
    first = pay(api, payer, "late", payee=payee.handle, amount=100)
    assert first.status_code == 409
    api.deposit(payer.handle, 1000)
    replay = pay(api, payer, "late", payee=payee.handle, amount=100)
    assert replay.status_code == 409 and replay.json() == first.json()
    assert balance(api, payer) == 1000


def test_the_replay_of_a_paid_code_answers_the_first_201(api: Api) -> None:
    """The dynamic code a key paid is paid by the time the retry comes: the retry answers the
    stored 201 (not 409 code_already_paid), pays nothing more, and another key is refused."""
    _payee, agent, agency = shop(api)
    code = api.code(agent, agency["id"], "dynamic", amount=500)
    payer = api.user(funds=2_000)
    first = pay(api, payer, "till-7", code=code["token"])
    replay = pay(api, payer, "till-7", code=code["token"])
    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json()
    other = pay(api, payer, "till-8", code=code["token"])
    assert other.status_code == 409, other.text
    assert balance(api, payer) == 1_500


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there"])
def test_a_bad_idempotency_key_is_422(api: Api, key: str) -> None:
    """Idempotency-Key must be 1-255 printable ASCII characters."""
    payer, payee = api.user(funds=100), api.user()
    response = pay(api, payer, key, payee=payee.handle, amount=1)
    assert response.status_code == 422 and response.json()["error"]["field"] == "Idempotency-Key"
    assert balance(api, payer) == 100


# --- visibility and lists (C5) ----------------------------------------------------------------


def test_only_payer_payee_and_agent_see_a_payment(api: Api) -> None:
    """GET /payments/{id} is 200 for its payer, payee and agent and 404 for anyone else,
    exactly like an id that does not exist."""
    payee, agent, agency = shop(api)
    code = api.code(agent, agency["id"], "dynamic", amount=100)
    payer = api.user(funds=100)
    payment = paid(api, payer, code=code["token"])
    for user in (payer, payee, agent):
        assert api.get(f"/payments/{payment['id']}", user).json() == payment
    stranger = api.get(f"/payments/{payment['id']}", api.user())
    unknown = api.get("/payments/pay_doesnotexist", payer)
    assert stranger.status_code == unknown.status_code == 404
    assert stranger.json() == unknown.json()


def test_lists_filter_by_role_agent_code_and_time_and_agents_see_only_their_codes(
    api: Api,
) -> None:
    """The payee filters by agent and by code (C5); an agent sees only what went through its
    own codes; role filters; from/to bound created_at; pages follow next_cursor."""
    payee = api.user()
    ann, ben = api.user("ann-clerk"), api.user("ben-clerk")
    ann_code = api.code(ann, api.agency(payee, ann)["id"], "static")
    ben_code = api.code(ben, api.agency(payee, ben)["id"], "static")
    payer = api.user(funds=10_000)
    through_ann = [paid(api, payer, code=ann_code["token"], amount=n) for n in (1, 2, 3)]
    through_ben = paid(api, payer, code=ben_code["token"], amount=4)
    direct = paid(api, payer, payee=payee.handle, amount=5)

    def ids(path: str, user: User) -> list[str]:
        response = api.get(path, user)
        assert response.status_code == 200, response.text
        return [p["id"] for p in response.json()["data"]]

    newest_first = [direct["id"], through_ben["id"], *[p["id"] for p in reversed(through_ann)]]
    assert ids("/payments", payee) == newest_first
    assert ids("/payments?role=payee&agent=ANN-CLERK", payee) == newest_first[2:]
    assert ids(f"/payments?code_id={ben_code['id']}", payee) == [through_ben["id"]]
    assert ids("/payments", ann) == newest_first[2:]
    assert ids("/payments?role=agent", ben) == [through_ben["id"]]
    assert ids("/payments?role=payer", payee) == []
    assert ids("/payments?agent=no-such-agent", payee) == []
    assert ids("/payments?from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z", payee) == []
    since = through_ben["created_at"]
    assert ids(f"/payments?from={since}", payee) == newest_first[:2]
    assert ids(f"/payments?to={since}", payee) == newest_first[2:]

    first = api.get("/payments?limit=2", payer).json()
    assert [p["id"] for p in first["data"]] == newest_first[:2] and first["next_cursor"]
    rest = api.get(f"/payments?limit=2&cursor={first['next_cursor']}", payer).json()
    assert [p["id"] for p in rest["data"]] == newest_first[2:4]
    for bad in ("role=boss", "from=yesterday", "limit=0", "limit=201"):
        assert api.get(f"/payments?{bad}", payer).status_code == 422


# --- refunds ----------------------------------------------------------------------------------


def refund(api: Api, user: User, payment_id: str, key: str | None = None, **body: Any) -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return api.post(f"/payments/{payment_id}/refunds", user, json=body, headers=headers)


def test_partial_then_full_refund_returns_money_and_updates_the_status(api: Api) -> None:
    """A partial refund makes the payment partially_refunded; a refund without amount gives
    back the rest and makes it refunded; more is 409 refund_exceeds_payment. Every party
    gets a payment.refunded event each time."""
    payee, agent, agency = shop(api)
    code = api.code(agent, agency["id"], "dynamic", amount=1000)
    payer = api.user(funds=1000)
    payment = paid(api, payer, code=code["token"])
    part = refund(api, payee, payment["id"], amount=300, reason="one item missing")
    assert part.status_code == 201, part.text
    assert set(part.json()) == {"id", "payment_id", "amount", "reason", "created_at"}
    assert part.json()["amount"] == 300 and part.json()["reason"] == "one item missing"
    shown = api.get(f"/payments/{payment['id']}", payer).json()
    assert shown["status"] == "partially_refunded" and shown["refunded_amount"] == 300
    too_much = refund(api, payee, payment["id"], amount=701)
    assert too_much.status_code == 409 and error_of(too_much) == "refund_exceeds_payment"
    rest = refund(api, payee, payment["id"])
    assert rest.status_code == 201 and rest.json()["amount"] == 700
    shown = api.get(f"/payments/{payment['id']}", payee).json()
    assert shown["status"] == "refunded" and shown["refunded_amount"] == 1000
    again = refund(api, payee, payment["id"])
    assert again.status_code == 409 and error_of(again) == "refund_exceeds_payment"
    assert balance(api, payer) == 1000 and balance(api, payee) == 0
    for user in (payer, payee, agent):
        events = api.get("/events", user).json()["data"]
        refunds = [e["data"] for e in events if e["type"] == "payment.refunded"]
        assert [r["refunded_amount"] for r in refunds] == [300, 1000]


def test_who_may_refund(api: Api) -> None:
    """The payee may; an agent only with can_refund; the payer or an agent without it who
    can see the payment get 403; a stranger gets 404."""
    payee, clerk, agency = shop(api)
    trusted = api.user()
    trusted_agency = api.agency(payee, trusted, can_refund=True)
    payer = api.user(funds=1000)
    by_clerk = paid(api, payer, code=api.code(clerk, agency["id"], "static")["token"], amount=10)
    by_trusted = paid(
        api, payer, code=api.code(trusted, trusted_agency["id"], "static")["token"], amount=10
    )
    for user, payment in ((payer, by_clerk), (clerk, by_clerk), (trusted, by_clerk)):
        response = refund(api, user, payment["id"], amount=1)
        expected = 404 if user is trusted else 403
        assert response.status_code == expected, (user.handle, response.text)
    assert refund(api, api.user(), by_clerk["id"]).status_code == 404
    assert refund(api, trusted, by_trusted["id"], amount=4).status_code == 201
    assert refund(api, payee, by_clerk["id"], amount=5).status_code == 201
    assert balance(api, payer) == 1000 - 20 + 9


def test_a_refund_needs_the_payee_to_have_the_money(api: Api) -> None:
    """The payee's balance pays the refund: once spent, a refund is 409 insufficient_funds
    and the payment is unchanged."""
    payer, payee = api.user(funds=500), api.user()
    payment = paid(api, payer, payee=payee.handle, amount=500)
    paid(api, payee, payee=api.user().handle, amount=450)
    response = refund(api, payee, payment["id"], amount=100)
    assert response.status_code == 409 and error_of(response) == "insufficient_funds"
    assert api.get(f"/payments/{payment['id']}", payee).json()["status"] == "succeeded"
    assert refund(api, payee, payment["id"], amount=50).status_code == 201


def test_refund_bodies_and_keys(api: Api) -> None:
    """A bad refund amount or reason is 422 on its field; an Idempotency-Key replays the
    first refund instead of refunding twice."""
    payer, payee = api.user(funds=500), api.user()
    payment = paid(api, payer, payee=payee.handle, amount=500)
    for body, field in (({"amount": 0}, "amount"), ({"amount": "1"}, "amount")):
        response = refund(api, payee, payment["id"], **body)
        assert response.status_code == 422 and response.json()["error"]["field"] == field
    long_reason = refund(api, payee, payment["id"], amount=1, reason="r" * 501)
    assert long_reason.status_code == 422
    first = refund(api, payee, payment["id"], "refund-1", amount=100)
    replay = refund(api, payee, payment["id"], "refund-1", amount=100)
    assert first.status_code == replay.status_code == 201 and first.json() == replay.json()
    assert api.get(f"/payments/{payment['id']}", payee).json()["refunded_amount"] == 100


# --- CSV and the report -----------------------------------------------------------------------


def test_csv_export_has_the_spec_header_and_one_row_per_payment(api: Api) -> None:
    """GET /payments.csv: the exact header, parties by handle, empty fields for absent
    values, text that a spreadsheet would run as a formula defused, same filters as the list."""
    payee, agent, agency = shop(api)
    code = api.code(agent, agency["id"], "static", label='Bar, "north"')
    payer = api.user(funds=1000)
    by_code = paid(api, payer, code=code["token"], amount=250, memo="=HYPERLINK(1)")
    direct = paid(api, payer, payee=payee.handle, amount=100)
    response = api.get("/payments.csv", payee)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    lines = response.text.splitlines()
    assert lines[0] == CSV_HEADER
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["id"] for r in rows] == [direct["id"], by_code["id"]]
    assert rows[0]["agent"] == rows[0]["code_id"] == rows[0]["memo"] == ""
    assert rows[1] == {
        "id": by_code["id"],
        "created_at": by_code["created_at"],
        "status": "succeeded",
        "amount": "250",
        "refunded_amount": "0",
        "currency": "CNY",
        "payer": payer.handle,
        "payee": payee.handle,
        "agent": agent.handle,
        "code_id": code["id"],
        "code_label": 'Bar, "north"',
        "memo": "'=HYPERLINK(1)",
    }
    filtered = api.get(f"/payments.csv?agent={agent.handle}", payee).text.splitlines()
    assert len(filtered) == 2 and filtered[1].startswith(by_code["id"])
    assert api.get("/payments.csv", api.user()).text.splitlines() == [CSV_HEADER]
    assert api.get("/payments.csv").status_code == 401


def test_agents_report_sums_each_agent_and_code_in_order(api: Api) -> None:
    """GET /reports/agents: per agent and per code count, gross, refunded and net, ordered
    by agent handle then label; direct payments and other payees' money are not in it."""
    payee = api.user()
    zoe, amy = api.user("zoe-clerk"), api.user("amy-clerk")
    zoe_code = api.code(zoe, api.agency(payee, zoe)["id"], "static", label="Till")
    amy_agency = api.agency(payee, amy)["id"]
    amy_b = api.code(amy, amy_agency, "static", label="B door")
    amy_a = api.code(amy, amy_agency, "static", label="A door")
    payer = api.user(funds=100_000)
    for code, amounts in ((zoe_code, [100]), (amy_b, [200, 300]), (amy_a, [50])):
        for amount in amounts:
            paid(api, payer, code=code["token"], amount=amount)
    refunded = api.get(f"/payments?code_id={amy_b['id']}", payee).json()["data"][0]
    assert refund(api, payee, refunded["id"], amount=120).status_code == 201
    paid(api, payer, payee=payee.handle, amount=999)
    body = api.get("/reports/agents", payee).json()
    assert body["next_cursor"] is None
    assert [(r["agent"]["handle"], r["label"]) for r in body["data"]] == [
        ("amy-clerk", "A door"),
        ("amy-clerk", "B door"),
        ("zoe-clerk", "Till"),
    ]
    b_door = body["data"][1]
    assert b_door == {
        "agent": {"handle": "amy-clerk", "display_name": "Amy-Clerk"},
        "code_id": amy_b["id"],
        "label": "B door",
        "count": 2,
        "gross": 500,
        "refunded": 120,
        "net": 380,
    }
    assert api.get("/reports/agents", zoe).json()["data"] == []
    paged = api.get("/reports/agents?limit=2", payee).json()
    assert len(paged["data"]) == 2 and paged["next_cursor"]
    tail = api.get(f"/reports/agents?limit=2&cursor={paged['next_cursor']}", payee).json()
    assert [r["label"] for r in tail["data"]] == ["Till"] and tail["next_cursor"] is None
    for bad in ("cursor=x", "cursor=%C2%B3", "from=soon", "limit=0"):
        assert api.get(f"/reports/agents?{bad}", payee).status_code == 422, bad
    empty = api.get("/reports/agents?from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z", payee)
    assert empty.json()["data"] == []


# --- receipts ---------------------------------------------------------------------------------


def decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_a_receipt_is_checkable_offline_with_the_published_key(api: Api) -> None:
    """The receipt's payload is the canonical JSON of the payment's facts (handles for
    parties, sorted keys, no spaces) and its Ed25519 signature verifies with the public key
    that GET /receipts/keys publishes without authentication."""
    payee, agent, agency = shop(api)
    code = api.code(agent, agency["id"], "dynamic", amount=640)
    payment = paid(api, api.user(funds=1000), code=code["token"])
    receipt = payment["receipt"]
    payload = decode(receipt["payload"])
    facts = json.loads(payload)
    assert facts == {
        "payment_id": payment["id"],
        "amount": 640,
        "currency": "CNY",
        "payer": payment["payer"]["handle"],
        "payee": payee.handle,
        "agent": agent.handle,
        "code_id": code["id"],
        "created_at": payment["created_at"],
    }
    assert payload == json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()
    keys = api.get("/receipts/keys").json()
    assert keys["next_cursor"] is None
    key = next(k for k in keys["data"] if k["key_id"] == receipt["key_id"])
    public = Ed25519PublicKey.from_public_bytes(decode(key["public_key"]))
    public.verify(decode(receipt["signature"]), payload)
    with pytest.raises(InvalidSignature):
        public.verify(decode(receipt["signature"]), payload.replace(b"640", b"940"))


def test_verify_endpoint_accepts_real_receipts_and_refuses_forgeries(api: Api) -> None:
    """POST /receipts/verify: a real receipt is valid with its payment; a changed payload,
    a changed signature or an unknown key is valid: false; no receipt is 422; no login 401."""
    payer, payee = api.user(funds=1000), api.user()
    payment = paid(api, payer, payee=payee.handle, amount=300)
    receipt = payment["receipt"]
    checker = api.user()
    good = api.post("/receipts/verify", checker, json={"receipt": receipt}).json()
    assert good == {"valid": True, "payment": payment}
    facts = json.loads(decode(receipt["payload"]))
    forged_payload = base64.urlsafe_b64encode(
        json.dumps({**facts, "amount": 30000}, sort_keys=True, separators=(",", ":")).encode()
    ).decode()
    flipped = receipt["signature"][:10] + ("A" if receipt["signature"][10] != "A" else "B")
    for forged in (
        {**receipt, "payload": forged_payload},
        {**receipt, "signature": flipped + receipt["signature"][11:]},
        {**receipt, "key_id": "rk_unknown"},
        {**receipt, "payload": "***"},
        {"payload": receipt["payload"]},
    ):
        response = api.post("/receipts/verify", checker, json={"receipt": forged})
        assert response.status_code == 200
        assert response.json() == {"valid": False, "payment": None}
    assert api.post("/receipts/verify", checker, json={}).status_code == 422
    assert api.post("/receipts/verify", json={"receipt": receipt}).status_code == 401


def test_rotating_the_key_keeps_old_receipts_valid(api: Api, database_url: str) -> None:
    """`paycode rotate-receipt-key` makes new receipts carry a new key id; the old key is
    still published and its receipts still verify."""
    payer, payee = api.user(funds=1000), api.user()
    before = paid(api, payer, payee=payee.handle, amount=10)
    assert cli(["rotate-receipt-key", "--database-url", database_url]) == 0
    after = paid(api, payer, payee=payee.handle, amount=10)
    assert after["receipt"]["key_id"] != before["receipt"]["key_id"]
    published = {k["key_id"] for k in api.get("/receipts/keys").json()["data"]}
    assert {before["receipt"]["key_id"], after["receipt"]["key_id"]} <= published
    for payment in (before, after):
        check = api.post("/receipts/verify", payer, json={"receipt": payment["receipt"]})
        assert check.json()["valid"] is True


def test_a_configured_receipt_key_signs_and_only_its_public_half_is_stored(
    database_url: str,
) -> None:
    """PAYCODE_RECEIPT_KEY (base64url of a raw 32-byte Ed25519 private key) signs the
    receipts; the database keeps only its public key; a malformed one stops the start."""
    secret = receipts.generate_private_key_text()
    settings = Settings(database_url=database_url, admin_token=ADMIN_TOKEN, receipt_key=secret)
    with TestClient(create_app(settings, migrate_schema=False)) as client:
        api = Api(client, ADMIN_TOKEN)
        payer, payee = api.user(funds=100), api.user()
        payment = paid(api, payer, payee=payee.handle, amount=10)
    public = receipts.parse_private_key(secret).public_key()
    expected_id = receipts.key_id_of(public.public_bytes_raw())
    assert payment["receipt"]["key_id"] == expected_id
    with database(database_url) as session:
        row = session.get(receipts.ReceiptKey, expected_id)
        assert row is not None and row.private_key is None
    broken = Settings(database_url=database_url, receipt_key="not-a-key")
    with pytest.raises(receipts.ReceiptKeyError), TestClient(create_app(broken)):
        pass


# --- the books --------------------------------------------------------------------------------


def test_paycode_verify_passes_on_real_books_and_names_a_broken_balance(
    api: Api, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`paycode verify` exits 0 after payments and refunds, and exits non-zero naming the
    account once a balance no longer equals its ledger."""
    payer, payee = api.user(funds=1000), api.user()
    payment = paid(api, payer, payee=payee.handle, amount=400)
    assert refund(api, payee, payment["id"], amount=100).status_code == 201
    assert cli(["verify", "--database-url", database_url]) == 0
    assert capsys.readouterr().out.startswith("ok")
    with database(database_url) as session:
        row = session.get(Account, payee.account_id)
        assert row is not None
        row.balance += 1
        session.add(row)
    assert cli(["verify", "--database-url", database_url]) == 1
    out = capsys.readouterr().out
    assert f"account {payee.handle} has balance 301, its ledger sums to 300" in out
    assert "user balances add up to 1001, deposits to 1000" in out


def metric(api: Api, line_start: str) -> float:
    text = api.client.get("/metrics").text
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(line_start)]
    return float(values[0]) if values else 0.0


def test_committed_payments_and_refunds_are_counted_once_in_metrics(api: Api) -> None:
    """/metrics counts a payment once (not once per party's event) by kind, a refund once,
    and an idempotent replay not at all."""
    payer, payee = api.user(funds=1000), api.user()
    direct = 'paycode_payments_total{kind="direct"}'
    payments_before, refunds_before = metric(api, direct), metric(api, "paycode_refunds_total")
    payment = pay(api, payer, "metrics-1", payee=payee.handle, amount=100).json()
    pay(api, payer, "metrics-1", payee=payee.handle, amount=100)
    assert refund(api, payee, payment["id"], amount=10).status_code == 201
    assert metric(api, direct) == payments_before + 1
    assert metric(api, "paycode_refunds_total") == refunds_before + 1
