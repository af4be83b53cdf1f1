"""The authorization matrix: every route that reaches an object of a shop (its agency, codes,
payments, devices), tried by every role that must not see or change it. The cases are the
product of the ROLES and ACTIONS tables below, not picked by hand; objects a role may not see
are 404 (their existence never leaks), a revoked device is 401 everywhere, and a revoked agent
may still see its own history but may neither issue, refund nor cancel through it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.api import Api, User


@dataclass
class Shop:
    """A payee with an active agent, a pending agent and a revoked agent, their codes and
    payments, and the outsiders of each role."""

    payee: User
    agent: User
    payer: User
    ids: dict[str, str]
    roles: dict[str, User]


def build_shop(api: Api) -> Shop:
    payee, agent, payer = api.user(), api.user(), api.user(funds=100_000)
    spare = api.log_in(payee.handle, "tablet")
    agency = api.agency(payee, agent, can_refund=True)
    code = api.code(agent, agency["id"])
    static = api.code(agent, agency["id"], kind="static")
    paid = api.post("/payments", payer, json={"code": static["short_code"], "amount": 700})
    assert paid.status_code == 201, paid.text
    requester = api.user()
    pending = api.post("/agencies", requester, json={"payee": payee.handle})
    assert pending.status_code == 201

    # Outsiders: a stranger; a payer of another of this payee's payments; an agent of
    # another payee; an agent this payee revoked; and the payee's own revoked device.
    stranger = api.user()
    other_payer = api.user(funds=10_000)
    assert (
        api.post(
            "/payments", other_payer, json={"code": static["short_code"], "amount": 300}
        ).status_code
        == 201
    )
    elsewhere, other_agent = api.user(), api.user()
    api.code(other_agent, api.agency(elsewhere, other_agent)["id"])
    revoked_agent = api.user()
    old_agency = api.agency(payee, revoked_agent, can_refund=True)
    old_code = api.code(revoked_agent, old_agency["id"], kind="static")
    old_paid = api.post("/payments", payer, json={"code": old_code["token"], "amount": 200})
    assert old_paid.status_code == 201
    assert api.post(f"/agencies/{old_agency['id']}/revoke", payee).status_code == 200
    lost = api.log_in(payee.handle, "stolen phone")
    assert api.delete(f"/devices/{lost.device_id}", payee).status_code == 204
    return Shop(
        payee=payee,
        agent=agent,
        payer=payer,
        ids={
            "agency": agency["id"],
            "pending": pending.json()["id"],
            "code": code["id"],
            "static": static["id"],
            "payment": paid.json()["id"],
            "device": spare.device_id,
            "old_agency": old_agency["id"],
            "old_code": old_code["id"],
            "old_payment": old_paid.json()["id"],
        },
        roles={
            "stranger": stranger,
            "payer of another payment": other_payer,
            "agent of another payee": other_agent,
            "revoked agent": revoked_agent,
            "revoked device": lost,
        },
    )


@dataclass(frozen=True)
class Action:
    name: str
    method: str
    path: str
    body: dict[str, Any] | None = None


# Every route that names or reaches one object of the shop.
ACTIONS = [
    Action("see the code", "GET", "/codes/{code}"),
    Action("cancel the code", "POST", "/codes/{code}/cancel"),
    Action("QR svg of the code", "GET", "/codes/{code}/qr.svg"),
    Action("QR png of the code", "GET", "/codes/{code}/qr.png"),
    Action("barcode of the code", "GET", "/codes/{code}/barcode.svg"),
    Action("cancel the static code", "POST", "/codes/{static}/cancel"),
    Action("issue a code on the agency", "POST", "/codes", {"agency_id": "{agency}"}),
    Action("revoke the agency", "POST", "/agencies/{agency}/revoke"),
    Action("accept the pending agency", "POST", "/agencies/{pending}/accept"),
    Action("revoke the pending agency", "POST", "/agencies/{pending}/revoke"),
    Action("see the payment", "GET", "/payments/{payment}"),
    Action("refund the payment", "POST", "/payments/{payment}/refunds", {"amount": 1}),
    Action("revoke the payee's device", "DELETE", "/devices/{device}"),
    Action("see the revoked agent's code", "GET", "/codes/{old_code}"),
    Action("see the revoked agent's payment", "GET", "/payments/{old_payment}"),
    Action("issue on the revoked agency", "POST", "/codes", {"agency_id": "{old_agency}"}),
    Action("refund through the revoked agency", "POST", "/payments/{old_payment}/refunds", {}),
    Action("cancel the revoked agent's code", "POST", "/codes/{old_code}/cancel"),
]
ROLES = [
    "stranger",
    "payer of another payment",
    "agent of another payee",
    "revoked agent",
    "revoked device",
]
# Where a role's answer is not 404. A revoked agent keeps its own history (it may read what
# went through its codes) but the revocation refuses everything it would do with it.
EXCEPTIONS: dict[tuple[str, str], tuple[int, str]] = {
    ("revoked agent", "see the revoked agent's code"): (200, ""),
    ("revoked agent", "see the revoked agent's payment"): (200, ""),
    ("revoked agent", "issue on the revoked agency"): (409, "agency_revoked"),
    ("revoked agent", "refund through the revoked agency"): (403, "forbidden"),
    ("revoked agent", "cancel the revoked agent's code"): (409, "agency_revoked"),
}


def expected(role: str, action: Action) -> tuple[int, str]:
    if role == "revoked device":
        return 401, "unauthorized"
    return EXCEPTIONS.get((role, action.name), (404, "not_found"))


def fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {key: fill(item, ids) for key, item in value.items()}
    return value


def owned_ids(shop: Shop) -> set[str]:
    """Ids of the shop's objects that no outsider's list may show. (The static code's id is
    not one: every payment through it names it, the other payer's own payment too.)"""
    return {shop.ids[name] for name in ("agency", "pending", "code", "payment")}


LISTS = [
    "/codes",
    "/codes?role=payee",
    "/agencies",
    "/payments",
    "/payments?role=payee",
    "/payments?role=agent",
    "/events",
    "/reports/agents",
    "/devices",
]


@pytest.mark.parametrize("role", ROLES)
def test_a_role_that_must_not_reach_an_object_is_refused(api: Api, role: str) -> None:
    """For each action of ACTIONS, this role gets the refusal of the table (404 by default,
    401 for a revoked device, the spec's 403/409 where a revoked agent still sees its
    history); its lists and CSV hold none of the shop's objects; and afterwards nothing the
    shop owns has changed."""
    shop = build_shop(api)
    who = shop.roles[role]
    before = shop_state(api, shop)
    wrong = []
    for action in ACTIONS:
        path = fill(action.path, shop.ids)
        kwargs = {"json": fill(action.body, shop.ids)} if action.body is not None else {}
        if action.method == "POST" and path == "/codes":
            kwargs["json"] = {**kwargs["json"], "kind": "dynamic", "amount": 100}
        response = api.request(action.method, path, who, **kwargs)
        status, code = expected(role, action)
        got_code = response.json()["error"]["code"] if response.status_code >= 400 else ""
        if (response.status_code, got_code) != (status, code):
            wrong.append(f"{action.name}: {response.status_code} {got_code}, want {status} {code}")
    assert not wrong, f"{role}: " + "; ".join(wrong)

    private = owned_ids(shop)
    for path in LISTS:
        response = api.get(path, who)
        if role == "revoked device":
            assert response.status_code == 401, path
            continue
        assert response.status_code == 200, path
        assert not private & set(_ids_in(response.json())), path
    csv = api.get("/payments.csv", who)
    assert csv.status_code == (401 if role == "revoked device" else 200)
    assert shop.ids["payment"] not in csv.text
    assert shop_state(api, shop) == before


def _ids_in(value: Any) -> list[str]:
    """Every string anywhere in a JSON body: an id of the shop must not appear at all."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [found for item in value.values() for found in _ids_in(item)]
    if isinstance(value, list):
        return [found for item in value for found in _ids_in(item)]
    return []


def shop_state(api: Api, shop: Shop) -> dict[str, Any]:
    """What the payee sees of its objects: unchanged by any refused attempt."""
    ids = shop.ids
    return {
        "agency": api.get("/agencies", shop.payee).json()["data"],
        "code": api.get(f"/codes/{ids['code']}", shop.payee).json()["status"],
        "static": api.get(f"/codes/{ids['static']}", shop.payee).json()["status"],
        "payment": api.get(f"/payments/{ids['payment']}", shop.payee).json()["refunded_amount"],
        "old": api.get(f"/payments/{ids['old_payment']}", shop.payee).json()["refunded_amount"],
        "devices": sorted(d["id"] for d in api.get("/devices", shop.payee).json()["data"]),
        "balance": api.get("/me", shop.payee).json()["balance"],
    }
