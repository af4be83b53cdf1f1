"""Spec §11's endpoint API: create (secret once), list, get, change, delete, rotate, test,
deliveries, retry; only the owner sees an endpoint; the URL rules hold at save time and again
at connect time. The deployment here does NOT allow private targets; names resolve through an
injected table so that the check itself (not a mock of it) is what runs."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.api import Api, User
from tests.conftest import ADMIN_TOKEN
from tests.webhook_receiver import until

PUBLIC_HOST = "hooks.example.com"


class Dns:
    """A name table standing in for the resolver; tests change it to play DNS rebinding."""

    def __init__(self) -> None:
        self.table = {PUBLIC_HOST: ["93.184.216.34"], "intranet.example.com": ["10.1.2.3"]}

    async def __call__(self, host: str, _port: int) -> list[str]:
        if host not in self.table:
            raise OSError("Name or service not known")
        return self.table[host]


@pytest.fixture
def dns() -> Dns:
    return Dns()


@pytest.fixture
def api(database_url: str, dns: Dns) -> Iterator[Api]:
    settings = Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        public_url_setting="http://testserver",
        extra={"webhook_resolver": dns, "webhook_interval": 0.05},
    )
    with TestClient(create_app(settings, migrate_schema=False)) as client:
        yield Api(client, ADMIN_TOKEN)


def create(api: Api, user: User, **body: Any) -> Any:
    body.setdefault("url", f"https://{PUBLIC_HOST}/paycode")
    return api.post("/webhooks", user, json=body)


def patch(api: Api, user: User, webhook_id: str, body: dict[str, Any]) -> Any:
    return api.request("PATCH", f"/webhooks/{webhook_id}", user, json=body)


def test_create_shows_the_secret_once_and_never_again(api: Api) -> None:
    """201 with whsec_ + base64 of ≥ 24 bytes and every event type by default; list, get,
    change and deliveries never carry the secret."""
    me = api.user()
    response = create(api, me, description="till 1")
    assert response.status_code == 201, response.text
    hook = response.json()
    assert set(hook) == {"id", "url", "events", "description", "enabled", "secret", "created_at"}
    assert hook["secret"].startswith("whsec_")
    assert len(base64.b64decode(hook["secret"].removeprefix("whsec_"))) >= 24
    assert "payment.succeeded" in hook["events"] and "deposit.succeeded" in hook["events"]
    assert hook["enabled"] is True and hook["description"] == "till 1"
    listed = api.get("/webhooks", me)
    got = api.get(f"/webhooks/{hook['id']}", me)
    changed = patch(api, me, hook["id"], {"description": "till 2"})
    history = api.get(f"/webhooks/{hook['id']}/deliveries", me)
    for answer in (listed, got, changed, history):
        assert answer.status_code == 200
        assert hook["secret"] not in answer.text and "secret" not in answer.text
    assert [h["id"] for h in listed.json()["data"]] == [hook["id"]]
    assert got.json() == {k: v for k, v in hook.items() if k != "secret"}
    assert changed.json()["description"] == "till 2"


def test_only_the_owner_sees_or_changes_an_endpoint(api: Api) -> None:
    """Another account gets 404 on every route of someone else's endpoint, as for an unknown
    id, and its own list stays empty."""
    owner, other = api.user(), api.user()
    hook = create(api, owner).json()
    delivery = api.post(f"/webhooks/{hook['id']}/test", owner).json()
    base = f"/webhooks/{hook['id']}"
    attempts = [
        api.get(base, other),
        patch(api, other, hook["id"], {"enabled": False}),
        api.delete(base, other),
        api.post(f"{base}/rotate-secret", other),
        api.post(f"{base}/test", other),
        api.get(f"{base}/deliveries", other),
        api.post(f"{base}/deliveries/{delivery['id']}/retry", other),
        api.get("/webhooks/whk_unknown", owner),
        api.post(f"{base}/deliveries/msg_unknown/retry", owner),
    ]
    for answer in attempts:
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "not_found"
    assert api.get("/webhooks", other).json()["data"] == []
    assert api.get(base, owner).json()["enabled"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "http://hooks.example.com/x"}, "url"),
        ({"url": "https://127.0.0.1/x"}, "url"),
        ({"url": "https://[::1]/x"}, "url"),
        ({"url": "https://10.0.0.8/x"}, "url"),
        ({"url": "https://192.168.0.2/x"}, "url"),
        ({"url": "https://169.254.169.254/latest/meta-data"}, "url"),
        ({"url": "https://[fe80::1]/x"}, "url"),
        ({"url": "https://0.0.0.0/x"}, "url"),
        ({"url": "https://intranet.example.com/x"}, "url"),
        ({"url": "https://unknown.example.com/x"}, "url"),
        ({"url": "https://" + "a" * 2048}, "url"),
        ({"url": 5}, "url"),
        ({}, "url"),
        ({"events": ["payment.exploded"]}, "events"),
        ({"events": []}, "events"),
        ({"events": "payment.succeeded"}, "events"),
        ({"description": "x" * 501}, "description"),
    ],
)
def test_bad_fields_are_422_on_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    """https only, public addresses only (loopback, private, link-local, metadata, a public
    name resolving to a private address, a name that does not resolve), known event types."""
    me = api.user()
    if "url" not in body and field != "url":
        body["url"] = f"https://{PUBLIC_HOST}/x"
    # ASCII JSON: a lone surrogate travels as its \\u escape, as a client would send it.
    raw = json.dumps(body).encode()
    response = api.post("/webhooks", me, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert api.get("/webhooks", me).json()["data"] == []


def test_a_lone_surrogate_is_refused_and_nothing_saved(api: Api) -> None:
    """Text that is not Unicode (a lone surrogate escape) is refused before any route code,
    as everywhere in the API; no endpoint is made."""
    me = api.user()
    raw = b'{"url": "https://hooks.example.com/x", "description": "\\ud800"}'
    response = api.post("/webhooks", me, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert api.get("/webhooks", me).json()["data"] == []


def test_changes_are_checked_like_creation(api: Api) -> None:
    """PATCH refuses a private URL and a non-boolean enabled, and applies good changes."""
    me = api.user()
    hook = create(api, me).json()
    assert patch(api, me, hook["id"], {"url": "https://10.9.9.9/"}).status_code == 422
    assert patch(api, me, hook["id"], {"enabled": "no"}).status_code == 422
    done = patch(
        api,
        me,
        hook["id"],
        {"url": f"https://{PUBLIC_HOST}/v2", "events": ["code.paid"], "enabled": False},
    )
    assert done.status_code == 200
    assert done.json()["url"] == f"https://{PUBLIC_HOST}/v2"
    assert done.json()["events"] == ["code.paid"] and done.json()["enabled"] is False
    test = api.post(f"/webhooks/{hook['id']}/test", me)
    assert test.status_code == 409 and test.json()["error"]["code"] == "webhook_disabled"


def test_at_most_ten_endpoints_per_account(api: Api) -> None:
    """The eleventh is 409 webhook_limit; deleting one (204, then 404) makes room."""
    me = api.user()
    ids = [create(api, me).json()["id"] for _ in range(10)]
    refused = create(api, me)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "webhook_limit"
    assert api.delete(f"/webhooks/{ids[0]}", me).status_code == 204
    assert api.get(f"/webhooks/{ids[0]}", me).status_code == 404
    assert create(api, me).status_code == 201
    page = api.get("/webhooks?limit=4", me).json()
    assert len(page["data"]) == 4 and page["next_cursor"]


def test_a_name_that_turns_private_after_saving_is_refused_when_connecting(
    api: Api, dns: Dns
) -> None:
    """DNS rebinding: the endpoint was saved while its name resolved to a public address; it
    now resolves to 127.0.0.1, and the attempt is refused at connect time (outcome
    refused_address), the delivery left pending for its retries."""
    me = api.user()
    hook = create(api, me).json()
    dns.table[PUBLIC_HOST] = ["127.0.0.1"]
    assert api.post(f"/webhooks/{hook['id']}/test", me).status_code == 202

    def attempted() -> list[dict[str, Any]]:
        found = api.get(f"/webhooks/{hook['id']}/deliveries", me).json()["data"]
        return [a for d in found for a in d["attempt_log"] if a["outcome"] != "in_flight"]

    until(lambda: bool(attempted()), 10)
    [attempt] = attempted()
    assert attempt["outcome"] == "refused_address"
    assert "private" in attempt["error"]
    [delivery] = api.get(f"/webhooks/{hook['id']}/deliveries", me).json()["data"]
    assert delivery["status"] == "pending" and delivery["last_status_code"] is None
