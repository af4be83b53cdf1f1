"""Spec §6 (C3, C7, C8, C10): collection codes on both databases — issuance by either side of
an active agency, static and dynamic rules, expiry, cancel, lists, the payer's scan, the images
and Idempotency-Key on POST /codes."""

from __future__ import annotations

import io
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import zxingcpp
from PIL import Image, ImageDraw
from sqlmodel import Session, select

from models import accounts, agencies, codes, issuance, shortcodes
from models.db import Database
from models.errors import Conflict
from tests.api import Api, User

SHORT_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{2}$")
CODE_FIELDS = {
    "id", "kind", "status", "agency_id", "agent", "payee", "label", "amount", "currency",
    "items", "memo", "token", "short_code", "url", "expires_at", "created_at", "paid_payment_id",
}  # fmt: skip
SCAN_FIELDS = {
    "kind", "status", "payee", "agent", "label", "amount", "currency", "items", "memo",
    "expires_at",
}  # fmt: skip


@contextmanager
def database(database_url: str) -> Iterator[Session]:
    """A write transaction on the test's database, for setting up states the API cannot
    reach in a test (time passing, a payment) without sleeping."""
    db = Database(database_url, pool_size=1)
    try:
        with db.write() as session:
            yield session
    finally:
        db.dispose()


def age_code(database_url: str, code_id: str, seconds: int = 3600) -> None:
    with database(database_url) as session:
        row = session.get(codes.Code, code_id)
        assert row is not None and row.expires_at is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=seconds)
        session.add(row)


def mark_paid(database_url: str, code_id: str) -> None:
    with database(database_url) as session:
        row = session.get(codes.Code, code_id)
        assert row is not None
        codes.mark_paid(session, row, "pay_test")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def shop(api: Api) -> tuple[User, User, dict[str, Any]]:
    """A payee, an agent, and the active agency between them."""
    payee, agent = api.user(), api.user()
    return payee, agent, api.agency(payee, agent, label="Counter 1")


def error_of(response: Any) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["field"]


# --- issuance ---------------------------------------------------------------------------------


def test_the_payee_issues_a_static_code_without_amount(api: Api, shop: Any) -> None:
    """A static code needs no amount (the payer types it) and never expires unless asked."""
    payee, agent, agency = shop
    response = api.post("/codes", payee, json={"agency_id": agency["id"], "kind": "static"})
    assert response.status_code == 201, response.text
    code = response.json()
    assert set(code) == CODE_FIELDS
    assert code["kind"] == "static" and code["status"] == "active"
    assert code["amount"] is None and code["items"] == [] and code["expires_at"] is None
    assert code["agency_id"] == agency["id"] and code["currency"] == "CNY"
    assert code["payee"] == {"handle": payee.handle, "display_name": payee.handle.title()}
    assert code["agent"] == {"handle": agent.handle, "display_name": agent.handle.title()}
    assert code["paid_payment_id"] is None and code["created_at"].endswith("Z")


def test_the_agent_issues_a_dynamic_code_with_a_fixed_amount(api: Api, shop: Any) -> None:
    """Either side of the agency may ask (C10); a dynamic code defaults to 15 minutes."""
    payee, agent, agency = shop
    code = api.code(agent, agency["id"], amount=4200, label="Table 7", memo="thanks")
    assert code["kind"] == "dynamic" and code["amount"] == 4200
    assert code["label"] == "Table 7" and code["memo"] == "thanks"
    assert code["payee"]["handle"] == payee.handle and code["agent"]["handle"] == agent.handle
    lifetime = parse_time(code["expires_at"]) - parse_time(code["created_at"])
    assert lifetime == timedelta(seconds=900)


def test_token_url_and_short_code_have_the_promised_shape(api: Api, shop: Any) -> None:
    """The token is ≥128 random bits URL-safe, the URL is the payer page, the short code is
    10 Crockford characters shown as XXXX-XXXX-XX with a valid check character."""
    _payee, agent, agency = shop
    first, second = api.code(agent, agency["id"]), api.code(agent, agency["id"])
    for code in (first, second):
        assert re.fullmatch(r"[A-Za-z0-9_-]{32,}", code["token"])
        assert code["url"] == f"http://testserver/c/{code['token']}"
        assert SHORT_RE.fullmatch(code["short_code"])
        assert shortcodes.normalize(code["short_code"]) == code["short_code"].replace("-", "")
    assert first["token"] != second["token"] and first["short_code"] != second["short_code"]
    assert first["id"] != second["id"]


def test_items_fix_the_amount_to_their_sum(api: Api, shop: Any) -> None:
    """With items the amount is Σ quantity × unit_amount; a matching amount is accepted too,
    and a zero-priced line is allowed as long as the total is at least 1."""
    _payee, agent, agency = shop
    items = [
        {"name": " Coffee ", "quantity": 2, "unit_amount": 450},
        {"name": "Napkin", "quantity": 1, "unit_amount": 0},
        {"name": "Cake", "quantity": 3, "unit_amount": 700},
    ]
    code = api.code(agent, agency["id"], items=items)
    assert code["amount"] == 2 * 450 + 3 * 700
    assert code["items"][0] == {"name": "Coffee", "quantity": 2, "unit_amount": 450}
    assert len(code["items"]) == 3
    again = api.code(agent, agency["id"], items=items, amount=3000)
    assert again["amount"] == 3000


def test_a_static_code_may_fix_its_amount_and_expiry(api: Api, shop: Any) -> None:
    """A static code given an amount keeps it; given expires_in, it expires."""
    payee, _agent, agency = shop
    code = api.code(payee, agency["id"], kind="static", amount=500, expires_in=3600)
    assert code["amount"] == 500
    assert parse_time(code["expires_at"]) - parse_time(code["created_at"]) == timedelta(hours=1)


def test_a_dynamic_code_without_amount_or_items_is_amount_required(api: Api, shop: Any) -> None:
    """Neither amount nor items on a dynamic code: 422 amount_required, nothing written."""
    _payee, agent, agency = shop
    response = api.post("/codes", agent, json={"agency_id": agency["id"], "kind": "dynamic"})
    assert error_of(response) == (422, "amount_required", "amount")
    assert api.get("/codes", agent).json()["data"] == []


def test_an_amount_that_is_not_the_items_sum_is_amount_mismatch(api: Api, shop: Any) -> None:
    """A given amount that differs from the items' sum is refused with 422 amount_mismatch."""
    _payee, agent, agency = shop
    body = {
        "agency_id": agency["id"],
        "kind": "dynamic",
        "amount": 999,
        "items": [{"name": "Tea", "quantity": 1, "unit_amount": 1000}],
    }
    assert error_of(api.post("/codes", agent, json=body)) == (422, "amount_mismatch", "amount")


INVALID_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"kind": "weekly"}, "kind"),
    ({"kind": None}, "kind"),
    ({"agency_id": None}, "agency_id"),
    ({"agency_id": 42}, "agency_id"),
    ({"amount": 0}, "amount"),
    ({"amount": -5}, "amount"),
    ({"amount": 12.5}, "amount"),
    ({"amount": "1250"}, "amount"),
    ({"amount": True}, "amount"),
    ({"amount": 10**12 + 1}, "amount"),
    ({"label": "x" * 101}, "label"),
    ({"label": 7}, "label"),
    ({"memo": "x" * 501}, "memo"),
    ({"expires_in": 59}, "expires_in"),
    ({"expires_in": 86_401}, "expires_in"),
    ({"expires_in": 600.0}, "expires_in"),
    ({"expires_in": "600"}, "expires_in"),
    ({"items": []}, "items"),
    ({"items": {"name": "x"}}, "items"),
    ({"items": [{"name": "x", "quantity": 1, "unit_amount": 1}] * 101}, "items"),
    ({"items": ["coffee"]}, "items[0]"),
    ({"items": [{"name": "", "quantity": 1, "unit_amount": 1}]}, "items[0].name"),
    ({"items": [{"name": "x" * 201, "quantity": 1, "unit_amount": 1}]}, "items[0].name"),
    ({"items": [{"quantity": 1, "unit_amount": 1}]}, "items[0].name"),
    ({"items": [{"name": "a", "quantity": 0, "unit_amount": 1}]}, "items[0].quantity"),
    ({"items": [{"name": "a", "quantity": 10**6 + 1, "unit_amount": 1}]}, "items[0].quantity"),
    ({"items": [{"name": "a", "quantity": 1.5, "unit_amount": 1}]}, "items[0].quantity"),
    ({"items": [{"name": "a", "quantity": 1, "unit_amount": -1}]}, "items[0].unit_amount"),
    ({"items": [{"name": "a", "quantity": 1, "unit_amount": 10**12 + 1}]}, "items[0].unit_amount"),
    ({"items": [{"name": "a", "quantity": 1}]}, "items[0].unit_amount"),
    ({"items": [{"name": "a", "quantity": 1, "unit_amount": 0}]}, "items"),
    ({"items": [{"name": "a", "quantity": 10**6, "unit_amount": 10**12}]}, "items"),
]


def test_each_invalid_field_is_422_with_its_field(api: Api, shop: Any) -> None:
    """Every field rule answers 422 validation_error naming the field; none writes a code."""
    _payee, agent, agency = shop
    base = {"agency_id": agency["id"], "kind": "dynamic", "amount": 100}
    for change, field in INVALID_BODIES:
        response = api.post("/codes", agent, json={**base, **change})
        assert error_of(response) == (422, "validation_error", field), (change, response.text)
    missing = {"kind": "static"}
    assert error_of(api.post("/codes", agent, json=missing)) == (
        422,
        "validation_error",
        "agency_id",
    )
    assert api.get("/codes", agent).json()["data"] == []


def test_a_pending_agency_cannot_issue(api: Api) -> None:
    """Until the payee accepts, neither side can issue: 409 agency_not_active."""
    payee, agent = api.user(), api.user()
    pending = api.post("/agencies", agent, json={"payee": payee.handle}).json()
    assert pending["status"] == "pending"
    for caller in (agent, payee):
        response = api.post("/codes", caller, json={"agency_id": pending["id"], "kind": "static"})
        assert error_of(response) == (409, "agency_not_active", None)
    assert api.post(f"/agencies/{pending['id']}/accept", payee).status_code == 200
    assert api.code(agent, pending["id"], kind="static")["status"] == "active"


def test_a_revoked_agency_cannot_issue_and_its_unpaid_codes_turn_revoked(
    api: Api, shop: Any, database_url: str
) -> None:
    """Revoking stops the agency's codes at once; a paid code stays paid; no new codes."""
    payee, agent, agency = shop
    static = api.code(payee, agency["id"], kind="static")
    dynamic = api.code(agent, agency["id"])
    paid = api.code(agent, agency["id"])
    mark_paid(database_url, paid["id"])
    assert api.post(f"/agencies/{agency['id']}/revoke", payee).status_code == 200
    for code in (static, dynamic):
        assert api.get(f"/codes/{code['id']}", agent).json()["status"] == "revoked"
    assert api.get(f"/codes/{paid['id']}", agent).json()["status"] == "paid"
    for caller in (agent, payee):
        response = api.post("/codes", caller, json={"agency_id": agency["id"], "kind": "static"})
        assert error_of(response) == (409, "agency_revoked", None)


def test_strangers_and_other_payees_agents_cannot_issue(api: Api, shop: Any) -> None:
    """Only a party of the agency may issue; anyone else gets 404 as if it did not exist,
    including an agent of another payee naming this agency, and an unknown id."""
    _payee, _agent, agency = shop
    stranger = api.user()
    other_payee = api.user()
    api.agency(other_payee, stranger)  # the stranger is an agent, but of someone else
    for agency_id in (agency["id"], "agc_unknown"):
        response = api.post("/codes", stranger, json={"agency_id": agency_id, "kind": "static"})
        assert error_of(response) == (404, "not_found", "agency_id")


def test_the_caller_must_be_logged_in(api: Api, shop: Any) -> None:
    """No token: 401 on every code route."""
    _payee, agent, agency = shop
    code = api.code(agent, agency["id"])
    for method, path in [
        ("POST", "/codes"),
        ("GET", "/codes"),
        ("GET", f"/codes/{code['id']}"),
        ("POST", f"/codes/{code['id']}/cancel"),
        ("GET", f"/codes/{code['id']}/qr.svg"),
        ("GET", f"/codes/{code['id']}/qr.png"),
        ("GET", f"/codes/{code['id']}/barcode.svg"),
        ("GET", f"/scan/{code['token']}"),
    ]:
        response = api.request(method, path, json={} if method == "POST" else None)
        assert error_of(response) == (401, "unauthorized", None), path


# --- expiry -----------------------------------------------------------------------------------


def test_effective_status_turns_expired_at_the_expiry_instant() -> None:
    """An active code reads expired from its expires_at on; other states and codes without
    expiry are untouched by time."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    code = codes.Code(
        id="cod_x",
        agency_id="agc_x",
        payee_id="acc_p",
        agent_id="acc_a",
        created_by_id="acc_a",
        kind="dynamic",
        amount=1,
        token="t",
        short_code="0000000000",
        expires_at=start + timedelta(seconds=60),
    )
    assert codes.effective_status(code, start + timedelta(seconds=59)) == "active"
    assert codes.effective_status(code, start + timedelta(seconds=60)) == "expired"
    code.expires_at = code.expires_at.replace(tzinfo=None)  # as SQLite may hand it back
    assert codes.effective_status(code, start + timedelta(seconds=61)) == "expired"
    code.status = "cancelled"
    assert codes.effective_status(code, start + timedelta(days=9)) == "cancelled"
    code.status, code.expires_at = "active", None
    assert codes.effective_status(code, start + timedelta(days=9)) == "active"


def test_an_expired_code_reads_expired_everywhere(api: Api, shop: Any, database_url: str) -> None:
    """Once its time has passed a code shows expired in the object, the list and the scan."""
    _payee, agent, agency = shop
    code = api.code(agent, agency["id"], expires_in=60)
    age_code(database_url, code["id"])
    assert api.get(f"/codes/{code['id']}", agent).json()["status"] == "expired"
    listed = api.get("/codes", agent).json()["data"]
    assert [c["status"] for c in listed] == ["expired"]
    assert api.get(f"/scan/{code['token']}", api.user()).json()["status"] == "expired"


# --- cancel -----------------------------------------------------------------------------------


def test_agent_or_payee_cancels_an_unpaid_code_once(api: Api, shop: Any) -> None:
    """Cancel is 200 with the object now cancelled; a second cancel is 409 code_cancelled."""
    payee, agent, agency = shop
    for caller in (agent, payee):
        code = api.code(agent, agency["id"])
        response = api.post(f"/codes/{code['id']}/cancel", caller)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
        assert set(response.json()) == CODE_FIELDS
        again = api.post(f"/codes/{code['id']}/cancel", caller)
        assert error_of(again) == (409, "code_cancelled", None)


def test_a_static_code_can_be_cancelled(api: Api, shop: Any) -> None:
    """A static code is never used up, so it stays cancellable until cancelled."""
    payee, _agent, agency = shop
    code = api.code(payee, agency["id"], kind="static")
    assert api.post(f"/codes/{code['id']}/cancel", payee).json()["status"] == "cancelled"


def test_cancel_refuses_paid_expired_and_revoked_codes(
    api: Api, shop: Any, database_url: str
) -> None:
    """Only an active code cancels: paid → code_already_paid, expired → code_expired,
    a revoked agency's code → agency_revoked; the status does not change."""
    payee, agent, agency = shop
    paid, expired, revoked = (api.code(agent, agency["id"]) for _ in range(3))
    mark_paid(database_url, paid["id"])
    age_code(database_url, expired["id"])
    assert error_of(api.post(f"/codes/{paid['id']}/cancel", agent)) == (
        409,
        "code_already_paid",
        None,
    )
    assert error_of(api.post(f"/codes/{expired['id']}/cancel", payee)) == (
        409,
        "code_expired",
        None,
    )
    statuses = {c["id"]: c["status"] for c in api.get("/codes", agent).json()["data"]}
    assert statuses == {paid["id"]: "paid", expired["id"]: "expired", revoked["id"]: "active"}
    api.post(f"/agencies/{agency['id']}/revoke", payee)
    assert error_of(api.post(f"/codes/{revoked['id']}/cancel", agent)) == (
        409,
        "agency_revoked",
        None,
    )
    assert api.get(f"/codes/{revoked['id']}", agent).json()["status"] == "revoked"
    assert api.get(f"/codes/{paid['id']}", agent).json()["status"] == "paid"


def test_a_stranger_can_neither_see_nor_cancel_a_code(api: Api, shop: Any) -> None:
    """Anyone but the agent and the payee gets 404 on the code, its cancel and its images,
    exactly as for an id that does not exist."""
    _payee, agent, agency = shop
    code = api.code(agent, agency["id"])
    stranger = api.user()
    for code_id in (code["id"], "cod_unknown", "x" * 300):
        assert error_of(api.get(f"/codes/{code_id}", stranger)) == (404, "not_found", None)
        for image in ("qr.svg", "qr.png", "barcode.svg"):
            assert api.get(f"/codes/{code_id}/{image}", stranger).status_code == 404
        assert error_of(api.post(f"/codes/{code_id}/cancel", stranger)) == (
            404,
            "not_found",
            None,
        )
    assert api.get(f"/codes/{code['id']}", agent).json()["status"] == "active"
    assert api.get("/codes", stranger).json() == {"data": [], "next_cursor": None}


# --- lists ------------------------------------------------------------------------------------


def test_lists_filter_by_role_and_page_newest_first(api: Api) -> None:
    """role=agent and role=payee split an account's codes; pages of limit follow the cursor
    newest first, without gaps or repeats."""
    owner, clerk, other_shop = api.user(), api.user(), api.user()
    till = api.agency(owner, owner)  # the owner at the till: its own agent
    counter = api.agency(owner, clerk)
    elsewhere = api.agency(other_shop, owner)  # the owner also collects for another shop
    mine = [api.code(owner, till["id"]) for _ in range(3)]
    clerk_code = api.code(clerk, counter["id"])
    as_agent_elsewhere = api.code(owner, elsewhere["id"])

    def ids(role: str | None = None, **params: Any) -> list[str]:
        query = {"role": role, **params} if role else params
        return [c["id"] for c in api.get("/codes", owner, params=query).json()["data"]]

    everything = [as_agent_elsewhere, clerk_code, *reversed(mine)]
    assert ids() == [c["id"] for c in everything]
    assert ids("agent") == [as_agent_elsewhere["id"], *(c["id"] for c in reversed(mine))]
    assert ids("payee") == [clerk_code["id"], *(c["id"] for c in reversed(mine))]
    assert [c["id"] for c in api.get("/codes", clerk).json()["data"]] == [clerk_code["id"]]

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = api.get("/codes", owner, params=params).json()
        assert len(body["data"]) <= 2
        seen += [c["id"] for c in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [c["id"] for c in everything]


def test_lists_filter_by_status_including_computed_expiry(
    api: Api, shop: Any, database_url: str
) -> None:
    """status= selects by the status a client sees: an active code past its expiry is listed
    under expired and not under active."""
    payee, agent, agency = shop
    active = api.code(agent, agency["id"])
    forever = api.code(agent, agency["id"], kind="static")
    expired = api.code(agent, agency["id"])
    cancelled = api.code(agent, agency["id"])
    paid = api.code(agent, agency["id"])
    age_code(database_url, expired["id"])
    api.post(f"/codes/{cancelled['id']}/cancel", agent)
    mark_paid(database_url, paid["id"])

    def ids(status: str) -> set[str]:
        body = api.get("/codes", payee, params={"role": "payee", "status": status}).json()
        assert all(c["status"] == status for c in body["data"])
        return {c["id"] for c in body["data"]}

    assert ids("active") == {active["id"], forever["id"]}
    assert ids("expired") == {expired["id"]}
    assert ids("cancelled") == {cancelled["id"]}
    assert ids("paid") == {paid["id"]}
    assert ids("revoked") == set()
    api.post(f"/agencies/{agency['id']}/revoke", agent)
    assert ids("revoked") == {active["id"], forever["id"], expired["id"]}


def test_list_parameters_are_validated(api: Api, shop: Any) -> None:
    """Unknown role or status, and a limit outside 1–200, are 422 naming the parameter."""
    _payee, agent, _agency = shop
    for params, field in [
        ({"role": "payer"}, "role"),
        ({"status": "done"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "many"}, "limit"),
    ]:
        assert error_of(api.get("/codes", agent, params=params)) == (
            422,
            "validation_error",
            field,
        )


# --- scan -------------------------------------------------------------------------------------


def test_any_logged_in_account_scans_a_code_by_its_token(api: Api, shop: Any) -> None:
    """The payer's view: payee, agent, label, amount, items, memo, expiry — and no token,
    id or short code that would let the viewer manage the code."""
    payee, agent, agency = shop
    items = [{"name": "Noodles", "quantity": 2, "unit_amount": 1800}]
    code = api.code(agent, agency["id"], items=items, label="Counter 1", memo="no onions")
    scanned = api.get(f"/scan/{code['token']}", api.user())
    assert scanned.status_code == 200, scanned.text
    view = scanned.json()
    assert set(view) == SCAN_FIELDS
    assert view == {
        "kind": "dynamic",
        "status": "active",
        "payee": code["payee"],
        "agent": code["agent"],
        "label": "Counter 1",
        "amount": 3600,
        "currency": "CNY",
        "items": items,
        "memo": "no onions",
        "expires_at": code["expires_at"],
    }
    assert view["payee"]["handle"] == payee.handle


def test_a_short_code_scans_however_it_is_typed(api: Api, shop: Any, database_url: str) -> None:
    """Lower case, dashes, spaces, and O/I/L for 0/1 all find the code (C4 typing)."""
    _payee, agent, agency = shop
    code = api.code(agent, agency["id"], amount=777)
    # Give the code a short code full of the characters people confuse.
    canonical = "01101A010" + shortcodes.check_character("01101A010")
    with database(database_url) as session:
        row = session.get(codes.Code, code["id"])
        assert row is not None
        row.short_code = canonical
        session.add(row)
    payer = api.user()
    shown = shortcodes.display(canonical)
    typed_forms = [
        shown,
        shown.lower(),
        shown.replace("-", " "),
        canonical.lower(),
        shown.replace("0", "O").replace("1", "I"),
        shown.replace("0", "o").replace("1", "l"),
        " " + shown.replace("1", "L") + " ",
    ]
    for typed in typed_forms:
        response = api.get(f"/scan/{typed}", payer)
        assert response.status_code == 200, typed
        assert response.json()["amount"] == 777


def test_unknown_and_mistyped_codes_are_404(api: Api, shop: Any) -> None:
    """A wrong token, a short code with one character changed, or garbage: 404 not_found."""
    _payee, agent, agency = shop
    code = api.code(agent, agency["id"])
    short = code["short_code"].replace("-", "")
    swapped = "Z" if short[0] != "Z" else "Y"
    payer = api.user()
    for typed in [
        code["token"][:-1] + ("A" if code["token"][-1] != "A" else "B"),
        swapped + short[1:],
        "nothing-here",
        "x" * 250,
    ]:
        assert error_of(api.get(f"/scan/{typed}", payer)) == (404, "not_found", None), typed


# --- images (C7) ------------------------------------------------------------------------------


def rasterize_barcode(svg: bytes) -> Image.Image:
    """Draw the bars of a python-barcode SVG (rects in mm) into an image a reader can scan."""
    root = ET.fromstring(svg)
    rects = [el for el in root.iter() if el.tag.endswith("rect")]
    bars = [
        (float(r.get("x", "0").rstrip("m")), float(r.get("width", "0").rstrip("m")))
        for r in rects
        if "fill:black" in (r.get("style") or "").replace(" ", "")
    ]
    assert bars, "no bars in the barcode SVG"
    unit = min(width for _x, width in bars)
    right = max(x + width for x, width in bars)
    scale = 4 / unit
    image = Image.new("L", (int((right + 10 * unit) * scale), 120), 255)
    draw = ImageDraw.Draw(image)
    for x, width in bars:
        left = (x + 5 * unit) * scale
        draw.rectangle([round(left), 10, round(left + width * scale) - 1, 110], fill=0)
    return image


def test_the_qr_png_decodes_to_the_code_url(api: Api, shop: Any) -> None:
    """qr.png is a PNG a phone reads as exactly the code's url (C7)."""
    payee, agent, agency = shop
    code = api.code(agent, agency["id"])
    for caller in (agent, payee):
        response = api.get(f"/codes/{code['id']}/qr.png", caller, params={"scale": 6})
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.headers["cache-control"].startswith("private")
        assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
        decoded = zxingcpp.read_barcodes(
            Image.open(io.BytesIO(response.content)), formats=zxingcpp.BarcodeFormat.QRCode
        )
        assert [d.text for d in decoded] == [code["url"]]


def test_the_qr_svg_is_an_svg_whose_size_follows_the_scale(api: Api, shop: Any) -> None:
    """qr.svg is SVG; ?scale= grows it linearly (1–40)."""
    _payee, agent, agency = shop
    code = api.code(agent, agency["id"])
    small = api.get(f"/codes/{code['id']}/qr.svg", agent, params={"scale": 1})
    large = api.get(f"/codes/{code['id']}/qr.svg", agent, params={"scale": 10})
    for response in (small, large):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("image/svg+xml")
        assert b"<svg" in response.content
    width_small = int(ET.fromstring(small.content).get("width", "0"))
    width_large = int(ET.fromstring(large.content).get("width", "0"))
    assert width_large == 10 * width_small


def test_a_scale_outside_1_to_40_is_422(api: Api, shop: Any) -> None:
    """?scale= must be an integer from 1 to 40 on both QR images."""
    _payee, agent, agency = shop
    code = api.code(agent, agency["id"])
    for image in ("qr.svg", "qr.png"):
        for scale in ("0", "41", "2.5", "big", "-1"):
            response = api.get(f"/codes/{code['id']}/{image}", agent, params={"scale": scale})
            assert error_of(response) == (422, "validation_error", "scale"), (image, scale)


def test_the_barcode_is_code_128_of_the_short_code(api: Api, shop: Any, database_url: str) -> None:
    """barcode.svg decodes as Code 128 to the displayed short code, including one that opens
    with the digits "99" (which a naive Code 128 set C optimizer drops)."""
    payee, _agent, agency = shop
    random_code = api.code(payee, agency["id"], kind="static")
    nines = api.code(payee, agency["id"], kind="static")
    canonical = "99TEGAJCH" + shortcodes.check_character("99TEGAJCH")
    with database(database_url) as session:
        row = session.get(codes.Code, nines["id"])
        assert row is not None
        row.short_code = canonical
        session.add(row)
    for code_id, expected in [
        (random_code["id"], random_code["short_code"]),
        (nines["id"], shortcodes.display(canonical)),
    ]:
        response = api.get(f"/codes/{code_id}/barcode.svg", payee)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("image/svg+xml")
        assert b"<svg" in response.content
        decoded = zxingcpp.read_barcodes(
            rasterize_barcode(response.content), formats=zxingcpp.BarcodeFormat.Code128
        )
        assert [d.text for d in decoded] == [expected]


@pytest.mark.parametrize("key", [None, "till-3"])
def test_a_short_code_drawn_twice_is_drawn_again(
    api: Api, shop: Any, monkeypatch: pytest.MonkeyPatch, key: str | None
) -> None:
    """The random short code of a new code is one an existing code holds: the unique index
    refuses it, the issue runs again with a fresh draw, and the caller gets a 201 with a
    short code of its own (with or without an Idempotency-Key)."""
    _payee, agent, agency = shop
    body = {"agency_id": agency["id"], "kind": "static"}
    taken = api.post("/codes", agent, json=body).json()
    draws = iter([shortcodes.normalize(taken["short_code"]), shortcodes.generate()])
    monkeypatch.setattr(shortcodes, "generate", lambda: next(draws))
    headers = {"Idempotency-Key": key} if key else {}
    fresh = api.post("/codes", agent, json=body, headers=headers)
    assert fresh.status_code == 201, fresh.text
    assert fresh.json()["short_code"] != taken["short_code"]
    assert next(draws, None) is None, "the second draw was not used"


# --- Idempotency-Key --------------------------------------------------------------------------


def test_the_same_key_and_body_replay_the_first_response(api: Api, shop: Any) -> None:
    """A retried POST /codes with its key returns the same 201 body and makes no second code."""
    _payee, agent, agency = shop
    body = {"agency_id": agency["id"], "kind": "dynamic", "amount": 880}
    headers = {"Idempotency-Key": "order-42"}
    first = api.post("/codes", agent, json=body, headers=headers)
    second = api.post("/codes", agent, json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert [c["id"] for c in api.get("/codes", agent).json()["data"]] == [first.json()["id"]]
    other = api.post("/codes", agent, json=body, headers={"Idempotency-Key": "order-43"})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]


def test_a_key_is_scoped_to_its_account(api: Api, shop: Any) -> None:
    """Two accounts using the same key string do not see each other's responses."""
    payee, agent, agency = shop
    body = {"agency_id": agency["id"], "kind": "static"}
    headers = {"Idempotency-Key": "same"}
    mine = api.post("/codes", agent, json=body, headers=headers).json()
    theirs = api.post("/codes", payee, json=body, headers=headers).json()
    assert mine["id"] != theirs["id"]


def test_the_same_key_with_another_body_is_idempotency_key_reused(api: Api, shop: Any) -> None:
    """Reusing a key for a different request is 422 idempotency_key_reused."""
    _payee, agent, agency = shop
    headers = {"Idempotency-Key": "k1"}
    body = {"agency_id": agency["id"], "kind": "dynamic", "amount": 100}
    assert api.post("/codes", agent, json=body, headers=headers).status_code == 201
    response = api.post("/codes", agent, json={**body, "amount": 101}, headers=headers)
    assert error_of(response)[:2] == (422, "idempotency_key_reused")
    assert len(api.get("/codes", agent).json()["data"]) == 1


def test_a_refused_request_replays_its_refusal(api: Api) -> None:
    """The first answer is kept even when it was an error: after the agency is accepted, the
    same key still answers the 409, while a new key issues."""
    payee, agent = api.user(), api.user()
    pending = api.post("/agencies", agent, json={"payee": payee.handle}).json()
    body = {"agency_id": pending["id"], "kind": "static"}
    headers = {"Idempotency-Key": "early"}
    first = api.post("/codes", agent, json=body, headers=headers)
    assert error_of(first) == (409, "agency_not_active", None)
    api.post(f"/agencies/{pending['id']}/accept", payee)
    replay = api.post("/codes", agent, json=body, headers=headers)
    assert (replay.status_code, replay.json()) == (409, first.json())
    assert api.post("/codes", agent, json=body, headers={"Idempotency-Key": "later"}).is_success


def test_an_empty_or_overlong_key_is_422(api: Api, shop: Any) -> None:
    """Idempotency-Key must be 1–255 printable ASCII characters; nothing is written else."""
    _payee, agent, agency = shop
    body = {"agency_id": agency["id"], "kind": "static"}
    for key in ("", "k" * 256, "tab\there"):
        response = api.post("/codes", agent, json=body, headers={"Idempotency-Key": key})
        assert error_of(response) == (422, "validation_error", "Idempotency-Key"), repr(key)
    assert api.post("/codes", agent, json=body, headers={"Idempotency-Key": "k" * 255}).is_success
    assert len(api.get("/codes", agent).json()["data"]) == 1


# --- concurrency ------------------------------------------------------------------------------


def test_a_code_issued_while_its_agency_is_revoked_is_revoked_too(database_url: str) -> None:
    """Issue first, revoke racing it: the revoke waits for the issuing transaction and then
    revokes the new code, so an active code never outlives its agency."""
    db = Database(database_url, pool_size=2)
    try:
        with db.write() as session:
            payee = accounts.sign_up(session, "racepayee", "Payee", "long enough")
            agent = accounts.sign_up(session, "raceagent", "Agent", "long enough")
            agency_view, _ = agencies.create(session, payee, {"agent": agent.handle})
        agency_id = agency_view["id"]
        revoked = threading.Event()

        def revoke() -> None:
            with db.write() as other:
                agencies.revoke(other, payee.id, agency_id)
                codes.revoke_unpaid_of_agency(other, agency_id)
            revoked.set()

        racer = threading.Thread(target=revoke)
        with db.write() as session:
            issued, _ = issuance.issue(
                session,
                agent.id,
                {"agency_id": agency_id, "kind": "static"},
                public_url="http://testserver",
                currency="CNY",
            )
            racer.start()
            # The revoke must not get through while the code is still uncommitted.
            assert not revoked.wait(0.5)
        racer.join(30)
        assert revoked.is_set()
        with db.read() as session:
            row = session.get(codes.Code, issued["id"])
            assert row is not None and row.status == codes.REVOKED
    finally:
        db.dispose()


def test_a_code_asked_for_while_its_agency_is_being_revoked_is_refused(database_url: str) -> None:
    """Revoke first, issue racing it: the issue waits for the revoke to commit and then sees
    the agency revoked (409 agency_revoked) instead of adding an active code to it
    (PostgreSQL: issue locks the agency row; SQLite: writers are serialized)."""
    db = Database(database_url, pool_size=2)
    try:
        with db.write() as session:
            payee = accounts.sign_up(session, "racepayee", "Payee", "long enough")
            agent = accounts.sign_up(session, "raceagent", "Agent", "long enough")
            agency_view, _ = agencies.create(session, payee, {"agent": agent.handle})
        agency_id = agency_view["id"]
        outcome: list[BaseException | dict[str, Any]] = []

        def issue() -> None:
            try:
                with db.write() as other:
                    view, _ = issuance.issue(
                        other,
                        agent.id,
                        {"agency_id": agency_id, "kind": "static"},
                        public_url="http://testserver",
                        currency="CNY",
                    )
                    outcome.append(view)
            except BaseException as exc:
                outcome.append(exc)

        racer = threading.Thread(target=issue)
        with db.write() as session:
            agencies.revoke(session, payee.id, agency_id)
            codes.revoke_unpaid_of_agency(session, agency_id)
            racer.start()
            racer.join(0.5)
            assert racer.is_alive(), "the issue must wait for the revoke"
        racer.join(30)
        assert len(outcome) == 1
        assert isinstance(outcome[0], Conflict) and outcome[0].code == "agency_revoked"
        with db.read() as session:
            assert session.exec(select(codes.Code)).all() == []
    finally:
        db.dispose()
