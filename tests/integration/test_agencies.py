"""Spec §5 (C3, C9, C10): who collects for whom, and the payee's consent."""

from __future__ import annotations

from tests.api import Api


def test_payee_names_an_agent_and_it_is_active_at_once(api: Api) -> None:
    """A payee-initiated agency is active immediately, with parties as {handle, display_name}."""
    shop, clerk = api.user(), api.user()
    response = api.post(
        "/agencies", shop, json={"agent": clerk.handle, "label": "Counter 3", "can_refund": True}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "active"
    assert body["payee"]["handle"] == shop.handle and body["agent"]["handle"] == clerk.handle
    assert set(body["payee"]) == {"handle", "display_name"}
    assert body["created_by"]["handle"] == shop.handle
    assert (body["label"], body["can_refund"]) == ("Counter 3", True)
    assert set(body) == {
        "id",
        "payee",
        "agent",
        "status",
        "label",
        "can_refund",
        "created_by",
        "created_at",
    }


def test_agent_request_waits_for_the_payee(api: Api) -> None:
    """An agent-initiated agency is pending; only the payee can accept it; accepting twice is
    409 agency_not_pending."""
    shop, clerk = api.user(), api.user()
    pending = api.post("/agencies", clerk, json={"payee": shop.handle}).json()
    assert pending["status"] == "pending"
    assert api.post(f"/agencies/{pending['id']}/accept", clerk).status_code == 403
    accepted = api.post(f"/agencies/{pending['id']}/accept", shop)
    assert accepted.status_code == 200 and accepted.json()["status"] == "active"
    again = api.post(f"/agencies/{pending['id']}/accept", shop)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "agency_not_pending"


def test_either_side_can_revoke_and_it_is_final(api: Api) -> None:
    """The payee revokes or the agent resigns; a revoked agency cannot be revoked or accepted."""
    shop, clerk, other = api.user(), api.user(), api.user()
    first = api.agency(shop, clerk)
    resigned = api.post(f"/agencies/{first['id']}/revoke", clerk)
    assert resigned.status_code == 200 and resigned.json()["status"] == "revoked"
    assert (
        api.post(f"/agencies/{first['id']}/revoke", shop).json()["error"]["code"]
        == "agency_revoked"
    )
    assert api.post(f"/agencies/{first['id']}/accept", shop).status_code == 409
    second = api.agency(shop, other)
    assert api.post(f"/agencies/{second['id']}/revoke", shop).json()["status"] == "revoked"


def test_one_open_agency_per_pair_but_history_is_kept(api: Api) -> None:
    """A second non-revoked agency for the same pair is 409 agency_exists, from either side;
    after revoking, the pair may start again."""
    shop, clerk = api.user(), api.user()
    first = api.agency(shop, clerk)
    duplicate = api.post("/agencies", shop, json={"agent": clerk.handle})
    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "agency_exists"
    reverse = api.post("/agencies", clerk, json={"payee": shop.handle})
    assert reverse.json()["error"]["code"] == "agency_exists"
    api.post(f"/agencies/{first['id']}/revoke", shop)
    assert api.post("/agencies", clerk, json={"payee": shop.handle}).status_code == 201


def test_many_payees_per_agent_many_agents_per_payee_and_self_agency(api: Api) -> None:
    """C9: one account agents for several payees, a payee has several agents, and a shop owner
    can be its own agent."""
    shop_a, shop_b, clerk_1, clerk_2 = api.user(), api.user(), api.user(), api.user()
    for shop in (shop_a, shop_b):
        api.agency(shop, clerk_1)
    api.agency(shop_a, clerk_2)
    own = api.agency(shop_a, shop_a)
    assert own["payee"]["handle"] == own["agent"]["handle"] == shop_a.handle
    as_agent = api.get("/agencies?role=agent", clerk_1).json()["data"]
    assert sorted(a["payee"]["handle"] for a in as_agent) == sorted([shop_a.handle, shop_b.handle])
    as_payee = api.get("/agencies?role=payee", shop_a).json()["data"]
    assert len(as_payee) == 3


def test_listing_filters_by_status_and_pages_with_a_cursor(api: Api) -> None:
    """GET /agencies filters by role and status, newest first, in pages of `limit`."""
    shop = api.user()
    clerks = [api.user() for _ in range(5)]
    made = [api.agency(shop, clerk) for clerk in clerks]
    api.post(f"/agencies/{made[0]['id']}/revoke", shop)
    seen: list[str] = []
    cursor = None
    while True:
        query = "/agencies?role=payee&status=active&limit=2" + (
            f"&cursor={cursor}" if cursor else ""
        )
        body = api.get(query, shop).json()
        seen += [a["id"] for a in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [a["id"] for a in reversed(made[1:])]
    assert api.get("/agencies?status=bogus", shop).status_code == 422
    assert api.get("/agencies?limit=0", shop).status_code == 422
    assert api.get("/agencies?limit=201", shop).status_code == 422


def test_strangers_cannot_see_or_touch_an_agency(api: Api) -> None:
    """An account outside the agency gets 404 for accept and revoke, and never lists it."""
    shop, clerk, stranger = api.user(), api.user(), api.user()
    agency = api.post("/agencies", clerk, json={"payee": shop.handle}).json()
    for action in ("accept", "revoke"):
        assert api.post(f"/agencies/{agency['id']}/{action}", stranger).status_code == 404
    assert api.get("/agencies", stranger).json()["data"] == []


def test_bad_agency_requests_are_4xx(api: Api) -> None:
    """Both or neither party given is 422; an unknown handle is 404 with its field; a label that
    is not a string or a can_refund that is not a bool is 422."""
    shop, clerk = api.user(), api.user()
    assert api.post("/agencies", shop, json={}).status_code == 422
    both = api.post("/agencies", shop, json={"agent": clerk.handle, "payee": clerk.handle})
    assert both.status_code == 422
    unknown = api.post("/agencies", shop, json={"agent": "nobody-x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "agent"
    unknown = api.post("/agencies", shop, json={"payee": "nobody-x"})
    assert unknown.json()["error"]["field"] == "payee"
    assert api.post("/agencies", shop, json={"agent": clerk.handle, "label": 5}).status_code == 422
    bad_flag = api.post("/agencies", shop, json={"agent": clerk.handle, "can_refund": "yes"})
    assert bad_flag.status_code == 422 and bad_flag.json()["error"]["field"] == "can_refund"
    assert api.get("/agencies", shop).json()["data"] == []


def test_agency_changes_write_events_to_both_parties(api: Api) -> None:
    """agency.requested, agency.activated and agency.revoked reach both accounts' outboxes with
    gapless seq."""
    from sqlmodel import select

    from models.events import Event

    shop, clerk = api.user(), api.user()
    agency = api.post("/agencies", clerk, json={"payee": shop.handle}).json()
    api.post(f"/agencies/{agency['id']}/accept", shop)
    api.post(f"/agencies/{agency['id']}/revoke", clerk)
    state = api.client.app.state.paycode
    with state.db.read() as session:
        for user in (shop, clerk):
            rows = session.exec(
                select(Event).where(Event.account_id == user.account_id).order_by(Event.seq)
            ).all()
            assert [(r.seq, r.type) for r in rows] == [
                (1, "agency.requested"),
                (2, "agency.activated"),
                (3, "agency.revoked"),
            ]
            assert rows[0].data["id"] == agency["id"]
