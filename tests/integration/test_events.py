"""Spec §8, the outbox half: GET /events lists the caller's own events by gapless seq,
oldest first, from any point (C6: a device that was offline gets what it missed)."""

from __future__ import annotations

from tests.api import Api


def test_events_are_the_callers_own_gapless_and_oldest_first(api: Api) -> None:
    """Deposit, agency and payment events arrive numbered 1..n with their types and data;
    another account's events are never listed."""
    payee, agent = api.user(), api.user()
    payer = api.user(funds=1000)
    code = api.code(agent, api.agency(payee, agent)["id"], "dynamic", amount=250)
    payment = api.post("/payments", payer, json={"code": code["token"]}).json()
    body = api.get("/events", payee).json()
    assert body["next_cursor"] is None
    assert [(e["seq"], e["type"]) for e in body["data"]] == [
        (1, "agency.activated"),
        (2, "payment.succeeded"),
        (3, "code.paid"),
    ]
    assert body["data"][1]["data"] == payment
    assert body["data"][2]["data"]["paid_payment_id"] == payment["id"]
    assert all(set(e) == {"seq", "type", "created_at", "data"} for e in body["data"])
    payer_events = api.get("/events", payer).json()["data"]
    assert [e["type"] for e in payer_events] == ["deposit.succeeded", "payment.succeeded"]
    assert [e["seq"] for e in api.get("/events", api.user()).json()["data"]] == []


def test_after_limit_and_cursor_page_through_the_outbox(api: Api) -> None:
    """?after=N starts after seq N; ?limit bounds the page; next_cursor is the last seq and
    continues where the page stopped; bad values are 422."""
    user = api.user()
    for amount in range(1, 8):
        api.deposit(user.handle, amount)
    after_four = api.get("/events?after=4", user).json()["data"]
    assert [e["seq"] for e in after_four] == [5, 6, 7]
    assert [e["data"]["amount"] for e in after_four] == [5, 6, 7]
    first = api.get("/events?limit=3", user).json()
    assert [e["seq"] for e in first["data"]] == [1, 2, 3] and first["next_cursor"] == "3"
    second = api.get(f"/events?limit=3&cursor={first['next_cursor']}", user).json()
    assert [e["seq"] for e in second["data"]] == [4, 5, 6] and second["next_cursor"] == "6"
    last = api.get("/events?limit=3&after=6", user).json()
    assert [e["seq"] for e in last["data"]] == [7] and last["next_cursor"] is None
    assert api.get("/events?after=7", user).json() == {"data": [], "next_cursor": None}
    # "³" is a digit to str.isdigit() but not to int().
    for bad in ("after=-1", "after=x", "limit=0", "limit=201", "cursor=abc", "cursor=%C2%B3"):
        assert api.get(f"/events?{bad}", user).status_code == 422, bad
    assert api.get("/events").status_code == 401
