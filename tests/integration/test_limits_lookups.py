"""Brute force on collection codes: failed lookups (GET /scan and POST /payments by code) are
limited per account and per client address, with 429 rate_limited and Retry-After; successful
lookups never count, and a refused payment is not stored under its Idempotency-Key."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import delete

from app.settings import Settings
from models import ratelimit, shortcodes
from models.db import Database
from tests.api import Api, User
from tests.conftest import app_settings

PER_ACCOUNT = 5
PER_CLIENT = 8


@pytest.fixture
def settings(database_url: str) -> Settings:
    return app_settings(
        database_url,
        lookup_failures_per_account=PER_ACCOUNT,
        lookup_failures_per_client=PER_CLIENT,
    )


def guess() -> str:
    """A well-formed short code (right check character) that is almost surely not issued."""
    return shortcodes.display(shortcodes.generate())


def forget_failures(database_url: str) -> None:
    """Stand-in for the window passing: the failures leave the table."""
    db = Database(database_url, pool_size=1)
    try:
        with db.write() as session:
            session.exec(delete(ratelimit.LookupFailure))  # type: ignore[call-overload]
    finally:
        db.dispose()


def assert_limited(response: Any) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= int(ratelimit.WINDOW.total_seconds()) + 1


@pytest.fixture
def live_code(api: Api) -> dict[str, Any]:
    payee, agent = api.user(), api.user()
    agency = api.agency(payee, agent)
    return api.code(agent, agency["id"], kind="static")


def test_an_account_guessing_short_codes_is_stopped_even_for_a_real_code(
    api: Api, live_code: dict[str, Any]
) -> None:
    """After PER_ACCOUNT unknown codes, every scan of that account is 429 — a live code too —
    while another account from elsewhere is unaffected by that account's count."""
    guesser = api.user()
    for _ in range(PER_ACCOUNT):
        assert api.get(f"/scan/{guess()}", guesser).status_code == 404
    assert_limited(api.get(f"/scan/{guess()}", guesser))
    assert_limited(api.get(f"/scan/{live_code['short_code']}", guesser))
    other = api.user()
    assert api.get(f"/scan/{live_code['short_code']}", other).status_code == 200


def test_one_address_is_capped_across_accounts(api: Api, live_code: dict[str, Any]) -> None:
    """Fresh accounts do not reset the count: PER_CLIENT failures from one address lock every
    account calling from it."""
    first, second = api.user(), api.user()
    for _ in range(PER_ACCOUNT - 1):
        assert api.get(f"/scan/{guess()}", first).status_code == 404
    for _ in range(PER_CLIENT - (PER_ACCOUNT - 1)):
        assert api.get(f"/scan/{guess()}", second).status_code == 404
    fresh = api.user()
    assert_limited(api.get(f"/scan/{live_code['token']}", fresh))
    assert_limited(api.get(f"/scan/{guess()}", first))


def test_found_codes_never_count(api: Api, live_code: dict[str, Any]) -> None:
    """A payer scanning real codes many times is never limited."""
    payer = api.user()
    for typed in [live_code["short_code"], live_code["token"]] * (PER_CLIENT + 2):
        assert api.get(f"/scan/{typed}", payer).status_code == 200


def test_payments_by_unknown_code_count_and_a_429_is_not_kept_under_the_key(
    api: Api, live_code: dict[str, Any], database_url: str
) -> None:
    """Paying by unknown codes counts like scanning; once limited a payment is 429 and not
    stored under its Idempotency-Key, so the same key succeeds once the window has passed.
    Direct payments to an unknown handle are not code lookups and never count."""
    payer = api.user(funds=10_000)
    for n in range(PER_ACCOUNT):
        response = api.post(
            "/payments",
            payer,
            json={"code": guess(), "amount": 100},
            headers={"Idempotency-Key": f"g{n}"},
        )
        assert response.status_code == 404
        assert response.json()["error"]["field"] == "code"
    body = {"code": live_code["short_code"], "amount": 100}
    assert_limited(api.post("/payments", payer, json=body, headers={"Idempotency-Key": "real"}))
    assert_limited(api.get(f"/scan/{live_code['token']}", payer))
    for _ in range(3):
        direct = api.post("/payments", payer, json={"payee": "nobody-here", "amount": 100})
        assert direct.status_code == 404
    forget_failures(database_url)
    paid = api.post("/payments", payer, json=body, headers={"Idempotency-Key": "real"})
    assert paid.status_code == 201, paid.text
    again = api.post("/payments", payer, json=body, headers={"Idempotency-Key": "real"})
    assert again.json()["id"] == paid.json()["id"]
    assert api.get("/me", payer).json()["balance"] == 10_000 - 100


def test_a_replayed_refusal_is_not_a_new_guess(api: Api) -> None:
    """Replaying one refused payment under its Idempotency-Key answers the stored 404 and does
    not count again, so a retrying client is never locked out by its own retries."""
    payer: User = api.user(funds=1000)
    body = {"code": guess(), "amount": 100}
    for _ in range(PER_ACCOUNT + 3):
        response = api.post("/payments", payer, json=body, headers={"Idempotency-Key": "same"})
        assert response.status_code == 404
    assert api.get(f"/scan/{guess()}", payer).status_code == 404
