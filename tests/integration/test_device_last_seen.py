"""/devices' "last seen" (spec §3, §10): a device is seen when a page on it asks GET /me; the
mark is written at most once a minute, and never on a revoked device."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from starlette.testclient import TestClient

from models.accounts import Device
from models.clock import utcnow
from tests.api import Api


def seen(api: Api, user: Any) -> dict[str, datetime]:
    devices = api.get("/devices", user).json()["data"]
    return {
        d["id"]: datetime.fromisoformat(d["last_seen_at"].replace("Z", "+00:00")) for d in devices
    }


def set_seen(client: TestClient, device_id: str, when: datetime) -> None:
    with client.app.state.paycode.db.write() as session:  # type: ignore[attr-defined]
        device = session.get(Device, device_id)
        assert device is not None
        device.last_seen_at = when
        session.add(device)


def test_a_device_is_last_seen_when_its_page_asks_who_it_is(api: Api, client: TestClient) -> None:
    """A new device is last seen at its login; GET /me from it moves the mark when a minute has
    passed, not before, and only its own; the other device's mark stays."""
    tablet = api.user()
    phone = api.log_in(tablet.handle, device_name="phone 2")
    at_login = seen(api, phone)
    created = {d["id"]: d["created_at"] for d in api.get("/devices", phone).json()["data"]}
    for device_id, when in at_login.items():
        assert when == datetime.fromisoformat(created[device_id].replace("Z", "+00:00"))

    long_ago = utcnow() - timedelta(minutes=30)
    set_seen(client, tablet.device_id, long_ago)
    set_seen(client, phone.device_id, long_ago)
    before = utcnow()
    assert api.get("/me", tablet).status_code == 200
    marks = seen(api, phone)
    assert marks[tablet.device_id] >= before - timedelta(seconds=1)
    assert marks[phone.device_id] == long_ago.replace(
        microsecond=marks[phone.device_id].microsecond
    )

    # Within the minute another /me writes nothing.
    recent = utcnow() - timedelta(seconds=20)
    set_seen(client, tablet.device_id, recent)
    assert api.get("/me", tablet).status_code == 200
    assert abs(seen(api, phone)[tablet.device_id] - recent) < timedelta(seconds=1)


def test_a_revoked_device_is_not_marked(api: Api, client: TestClient) -> None:
    """A revoked token gets 401 from /me and its device row is left as it was."""
    first = api.user()
    second = api.log_in(first.handle, device_name="second")
    assert api.delete(f"/devices/{second.device_id}", first).status_code == 204
    assert api.get("/me", second).status_code == 401
    with client.app.state.paycode.db.read() as session:  # type: ignore[attr-defined]
        device = session.get(Device, second.device_id)
        assert device is not None and device.last_seen_at is None
