"""Spec §3 (C1): accounts, logins as devices, many devices at once, revocation."""

from __future__ import annotations

from tests.api import PASSWORD, Api


def test_sign_up_returns_the_account_with_a_zero_balance(api: Api) -> None:
    """A new account is 201 with its public fields, lower-cased handle and no money."""
    response = api.post(
        "/accounts", json={"handle": "Shop.Owner", "display_name": "Shop", "password": PASSWORD}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["handle"] == "shop.owner"
    assert body["balance"] == 0
    assert body["currency"] == "CNY"
    assert body["id"] and body["created_at"].endswith("Z")
    assert "password" not in response.text


def test_one_account_is_logged_in_on_many_devices_at_once(api: Api) -> None:
    """Each login is a device with its own token; all of them work together (C1)."""
    handle = api.sign_up()
    phones = [api.log_in(handle, f"phone {n}") for n in range(3)]
    for phone in phones:
        me = api.get("/me", phone)
        assert me.status_code == 200 and me.json()["handle"] == handle
    devices = api.get("/devices", phones[0]).json()["data"]
    assert sorted(d["name"] for d in devices) == ["phone 0", "phone 1", "phone 2"]


def test_a_revoked_device_stops_working_at_once_and_others_keep_going(api: Api) -> None:
    """DELETE /devices/{id} kills that token only; logging out kills the caller's own."""
    handle = api.sign_up()
    first, second = api.log_in(handle, "a"), api.log_in(handle, "b")
    assert api.delete(f"/devices/{second.device_id}", first).status_code == 204
    assert api.get("/me", second).status_code == 401
    assert api.get("/me", first).status_code == 200
    assert api.delete("/sessions/current", first).status_code == 204
    assert api.get("/me", first).json()["error"]["code"] == "unauthorized"
