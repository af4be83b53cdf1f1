"""Spec §4 (C2): the admin funding rail and its ledger."""

from __future__ import annotations

from tests.api import Api
from tests.conftest import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_deposit_credits_the_account_and_reports_the_deposit(api: Api) -> None:
    """201 with {id, handle, amount, currency, created_at}; the balance moves by the amount."""
    user = api.user()
    response = api.post(
        "/admin/deposits", json={"handle": user.handle.upper(), "amount": 1250}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "handle", "amount", "currency", "created_at"}
    assert (body["handle"], body["amount"], body["currency"]) == (user.handle, 1250, "CNY")
    assert api.get("/me", user).json()["balance"] == 1250


def test_admin_api_refuses_user_tokens_and_no_token(api: Api) -> None:
    """A user token on the admin API is 401, as is none at all."""
    user = api.user()
    body = {"handle": user.handle, "amount": 100}
    assert api.post("/admin/deposits", user, json=body).status_code == 401
    assert api.post("/admin/deposits", json=body).status_code == 401
    assert api.get("/me", user).json()["balance"] == 0


def test_amounts_must_be_whole_minor_units_in_range(api: Api) -> None:
    """Floats, strings, bools, zero, negatives and overflow are 422 on field amount."""
    user = api.user()
    for amount in [12.5, 10.0, "100", True, 0, -5, 10**12 + 1, None, [1]]:
        response = api.post(
            "/admin/deposits", json={"handle": user.handle, "amount": amount}, headers=ADMIN
        )
        assert response.status_code == 422, (amount, response.text)
        assert response.json()["error"]["field"] == "amount"
    assert (
        api.post(
            "/admin/deposits", json={"handle": user.handle, "amount": 10**12}, headers=ADMIN
        ).status_code
        == 201
    )


def test_unknown_handle_is_404_with_the_field(api: Api) -> None:
    """Naming an account that does not exist is 404 not_found with field handle."""
    response = api.post(
        "/admin/deposits", json={"handle": "no-such-user", "amount": 5}, headers=ADMIN
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert response.json()["error"]["field"] == "handle"


def test_admin_api_is_off_without_an_admin_token(database_url: str) -> None:
    """With no PAYCODE_ADMIN_TOKEN configured, no bearer token opens the admin API."""
    from starlette.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(database_url=database_url), migrate_schema=False)
    with TestClient(app) as client:
        response = client.post(
            "/api/v1/admin/deposits",
            json={"handle": "x", "amount": 1},
            headers={"Authorization": "Bearer "},
        )
        assert response.status_code == 401
