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


def test_handles_are_unique_case_insensitively(api: Api) -> None:
    """A taken handle in any case is 409 handle_taken; lookup is case-insensitive too."""
    api.sign_up("corner")
    again = api.post(
        "/accounts", json={"handle": "CORNER", "display_name": "x", "password": PASSWORD}
    )
    assert again.status_code == 409
    assert again.json()["error"] == {
        "code": "handle_taken",
        "message": again.json()["error"]["message"],
        "field": "handle",
    }
    viewer = api.user()
    profile = api.get("/accounts/Corner", viewer)
    assert profile.status_code == 200
    assert set(profile.json()) == {"id", "handle", "display_name"}
    assert api.get("/accounts/nobody-here", viewer).status_code == 404
    assert api.get("/accounts/corner").status_code == 401


def test_sign_up_validates_each_field(api: Api) -> None:
    """Bad handles, names and short passwords are 422 naming the field; nothing is created."""
    cases = [
        ({"handle": "ab", "display_name": "A", "password": PASSWORD}, "handle"),
        ({"handle": "has space", "display_name": "A", "password": PASSWORD}, "handle"),
        ({"handle": "x" * 33, "display_name": "A", "password": PASSWORD}, "handle"),
        ({"handle": 12345, "display_name": "A", "password": PASSWORD}, "handle"),
        ({"handle": "fine_name", "display_name": "", "password": PASSWORD}, "display_name"),
        ({"handle": "fine_name", "display_name": "A", "password": "short"}, "password"),
        ({"handle": "fine_name", "display_name": "A"}, "password"),
    ]
    for body, field in cases:
        response = api.post("/accounts", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "validation_error"
        assert response.json()["error"]["field"] == field
    assert (
        api.post("/sessions", json={"handle": "fine_name", "password": PASSWORD}).status_code == 401
    )


def test_wrong_password_and_unknown_handle_are_the_same_401(api: Api) -> None:
    """Login failures never tell whether the handle exists."""
    handle = api.sign_up()
    wrong = api.post("/sessions", json={"handle": handle, "password": "not the password"})
    unknown = api.post("/sessions", json={"handle": "nobody123", "password": "whatever1"})
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_credentials"


def test_failed_logins_lock_the_handle_from_the_eleventh(api: Api) -> None:
    """Ten failures in 15 minutes are 401; from the 11th attempt every try is 429 with
    Retry-After, even with the right password; other handles are unaffected."""
    handle = api.sign_up()
    other = api.sign_up()
    for _ in range(10):
        response = api.post("/sessions", json={"handle": handle, "password": "wrong-password"})
        assert response.status_code == 401
    locked = api.post("/sessions", json={"handle": handle, "password": PASSWORD})
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "rate_limited"
    retry_after = int(locked.headers["Retry-After"])
    assert 0 < retry_after <= 15 * 60
    assert (
        api.post("/sessions", json={"handle": handle.upper(), "password": PASSWORD}).status_code
        == 429
    )
    assert api.log_in(other).token


def test_unknown_handles_count_and_one_address_is_capped_at_thirty(api: Api) -> None:
    """Failures against unknown handles count like known ones; from the 31st failure from one
    client address every attempt from it is 429."""
    real = api.sign_up()
    for attempt in range(30):
        response = api.post(
            "/sessions", json={"handle": f"ghost{attempt % 3}", "password": "wrong-password"}
        )
        assert response.status_code == 401, attempt
    blocked = api.post("/sessions", json={"handle": real, "password": PASSWORD})
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0


def test_tokens_are_long_random_and_stored_only_hashed(api: Api, settings) -> None:  # type: ignore[no-untyped-def]
    """A token has at least 128 random bits and the database holds only its hash, so a leak
    of the device table logs nobody in."""
    from models.accounts import Device
    from models.db import Database

    user = api.user()
    assert len(user.token) >= 40
    db = Database(settings.database_url)
    try:
        with db.read() as session:
            device = session.get(Device, user.device_id)
            assert device is not None
            assert user.token not in device.token_hash
            assert (
                api.get("/me", headers={"Authorization": f"Bearer {device.token_hash}"}).status_code
                == 401
            )
    finally:
        db.dispose()
