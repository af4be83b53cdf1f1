"""Payer and counter flows past the happy path: static codes typed by hand, expired codes,
double submits, a dropped WebSocket, refunds and the CSV export."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.api import Api, User
from tests.e2e.conftest import PHONE, TABLET

pytestmark = pytest.mark.browser
SHORT_CODE = re.compile(r"^[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{2}$")
BLOB = re.compile(r"^blob:")


def shop(api: Api, **agency: Any) -> tuple[User, User, User, dict[str, Any]]:
    owner, clerk = api.user(), api.user()
    customer = api.user(funds=100_000)
    made = api.agency(owner, clerk, label="Till", **agency)
    return owner, clerk, customer, made


def dynamic_code(api: Api, clerk: User, agency_id: str, amount: int) -> dict[str, Any]:
    response = api.post(
        "/codes", clerk, json={"agency_id": agency_id, "kind": "dynamic", "amount": amount}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_static_code_typed_on_pay_with_dashes_and_lower_case(api: Api, open_tab: Any) -> None:
    """The counter's static code, typed on /pay in lower case with stray dashes and spaces, finds
    the code; a one-character slip is refused before any request; the payer types the amount,
    pays, and the counter's feed lists it."""
    _owner, clerk, customer, _agency = shop(api)
    tablet = open_tab(TABLET, clerk).page
    tablet.goto("/counter")
    tablet.get_by_role("button", name="Static code").click()
    short = tablet.locator("#static-short")
    expect(short).to_have_text(SHORT_CODE)
    shown = short.inner_text()
    expect(tablet.locator("#static-qr")).to_have_attribute("src", BLOB)
    tablet.get_by_role("button", name="Close").click()

    phone = open_tab(PHONE, customer).page
    phone.goto("/pay")
    box = phone.get_by_label("Short code")
    canonical = shown.replace("-", "")
    slipped = canonical[:3] + ("A" if canonical[3] != "A" else "B") + canonical[4:]
    box.fill(slipped)
    phone.get_by_role("button", name="Continue").click()
    expect(phone.locator("#typing-error")).to_contain_text("typing mistake")
    typed = f"{canonical[:2].lower()} {canonical[2:6].lower()}--{canonical[6:].lower()}"
    box.fill(typed)
    expect(box).to_have_value(shown)
    phone.get_by_role("button", name="Continue").click()
    expect(phone.locator("#details-agent")).to_contain_text(clerk.handle)
    phone.get_by_label("Amount to pay (CN¥)").fill("7.25")
    phone.get_by_role("button", name="Pay CN¥7.25").click()
    expect(phone.locator("#receipt-amount")).to_have_text("CN¥7.25")
    expect(tablet.locator("#feed .feed-item")).to_have_count(1)
    expect(tablet.locator("#feed")).to_contain_text("CN¥7.25")


def test_expired_code_shows_a_clear_message(api: Api, open_tab: Any, server: Any) -> None:
    """A code past its expiry opens with a plain 'expired' message and no pay button."""
    _owner, clerk, customer, agency = shop(api)
    code = dynamic_code(api, clerk, agency["id"], 990)
    # The shortest expiry is a minute; move this code's expiry into the past instead of waiting.
    with sqlite3.connect(server.database_path) as db:
        db.execute(
            "UPDATE code SET expires_at = '2000-01-01 00:00:00.000000' WHERE id = ?", (code["id"],)
        )
    phone = open_tab(PHONE, customer).page
    phone.goto(f"/c/{code['token']}")
    expect(phone.locator("#details-status")).to_have_text(
        "This code has expired. Ask the counter for a new one."
    )
    expect(phone.locator("#pay-confirm")).to_be_hidden()


def test_double_submit_pays_once(api: Api, open_tab: Any) -> None:
    """A double tap sends one payment; a retry after a lost answer reuses the attempt's
    Idempotency-Key, so the payer is charged once and sees the receipt."""
    _owner, clerk, customer, agency = shop(api)
    code = dynamic_code(api, clerk, agency["id"], 2_500)
    tab = open_tab(PHONE, customer)
    phone = tab.page
    keys: list[str] = []
    lost = {"done": False}

    def lose_first_answer(route: Any) -> None:
        keys.append(route.request.headers.get("idempotency-key", ""))
        response = route.fetch()
        if not lost["done"]:
            lost["done"] = True
            assert response.status == 201
            route.abort("connectionreset")
            return
        route.fulfill(response=response)

    phone.route("**/api/v1/payments", lose_first_answer)
    phone.goto(f"/c/{code['token']}")
    pay = phone.get_by_role("button", name="Pay CN¥25.00")
    pay.dblclick()
    expect(phone.locator("#pay-error")).to_contain_text("No connection")
    pay.click()
    expect(phone.locator("#receipt-amount")).to_have_text("CN¥25.00")
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]
    assert api.get("/me", customer).json()["balance"] == 100_000 - 2_500
    assert len(api.get("/payments?role=payer", customer).json()["data"]) == 1
    # The cut connection is this test's doing; Chromium logs it, and nothing else may be logged.
    tab.errors[:] = [e for e in tab.errors if "ERR_CONNECTION_RESET" not in e]


def test_counter_survives_a_websocket_drop(api: Api, open_tab: Any) -> None:
    """The tablet's socket is cut while a payment commits; it reconnects by itself with
    `after` = the last seq it saw, turns PAID and lists the missed payment exactly once. The
    payment seen live is said aloud once; the one replayed after the reconnect is not."""
    _owner, clerk, customer, agency = shop(api)
    tab = open_tab(TABLET, clerk)
    tablet = tab.page
    hellos: list[dict[str, Any]] = []
    seqs: list[int] = []
    sockets: list[Any] = []
    blocked = {"on": False}

    def route_socket(ws: Any) -> None:
        if blocked["on"]:
            ws.close()
            return
        upstream = ws.connect_to_server()
        sockets.append(ws)

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "hello":
                hellos.append(frame)
            upstream.send(message)

        def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "event":
                seqs.append(frame["seq"])
            ws.send(message)

        ws.on_message(from_page)
        upstream.on_message(from_server)

    tablet.route_web_socket("**/api/v1/ws", route_socket)
    tablet.add_init_script(
        "window.__spoken = [];speechSynthesis.speak = (u) => window.__spoken.push(u.text);"
    )
    tablet.goto("/counter")
    tablet.get_by_label("Say payments aloud").check()
    tablet.get_by_label("Amount").fill("18.00")
    tablet.get_by_role("button", name="Show code").click()
    expect(tablet.locator("#code-amount")).to_have_text("CN¥18.00")
    expect(tablet.locator("#live-status")).to_have_text("live")
    # One earlier payment, seen live, so the reconnect must resume after a real seq.
    other = dynamic_code(api, clerk, agency["id"], 100)
    api.post("/payments", customer, json={"code": other["token"]}, headers={"Idempotency-Key": "a"})
    expect(tablet.locator("#feed .feed-item")).to_have_count(1)
    assert tablet.evaluate("window.__spoken") == ["Received 1.00 yuan"]
    seen_before_drop = max(seqs)

    blocked["on"] = True
    sockets[-1].close()
    expect(tablet.locator("#live-status")).not_to_have_text("live")
    code_id = tablet.evaluate("document.getElementById('code-short').textContent")
    paid = api.post("/payments", customer, json={"code": code_id}, headers={"Idempotency-Key": "b"})
    assert paid.status_code == 201, paid.text
    time.sleep(0.5)
    expect(tablet.locator("#sale-paid")).to_be_hidden()
    blocked["on"] = False

    expect(tablet.locator("#sale-paid")).to_be_visible(timeout=10_000)
    expect(tablet.locator("#paid-amount")).to_have_text("CN¥18.00")
    expect(tablet.locator("#live-status")).to_have_text("live")
    expect(tablet.locator("#feed .feed-item")).to_have_count(2)
    expect(tablet.locator(f"#feed [data-payment-id='{paid.json()['id']}']")).to_have_count(1)
    assert tablet.evaluate("window.__spoken") == ["Received 1.00 yuan"]
    assert hellos[0]["after"] is None
    assert hellos[-1]["after"] == seen_before_drop
    assert len(seqs) == len(set(seqs)), f"an event was delivered twice: {seqs}"


def test_refund_and_csv_from_the_dashboard(api: Api, open_tab: Any) -> None:
    """The owner refunds part of a payment from the dashboard (the row and balance follow) and
    downloads the CSV of the period, which holds the payment with its refunded amount."""
    owner, clerk, customer, agency = shop(api)
    code = dynamic_code(api, clerk, agency["id"], 4_000)
    paid = api.post(
        "/payments", customer, json={"code": code["token"]}, headers={"Idempotency-Key": "p"}
    ).json()
    dash = open_tab(TABLET, owner).page
    dash.goto("/dashboard")
    row = dash.locator(f"#payments tr[data-payment-id='{paid['id']}']")
    expect(row).to_contain_text("CN¥40.00")
    row.get_by_role("button").click()
    dialog = dash.locator("#refund-dialog")
    expect(dialog.get_by_label("Amount (CN¥)")).to_have_value("40.00")
    dialog.get_by_label("Amount (CN¥)").fill("15.00")
    dialog.get_by_label("Reason").fill("one item returned")
    dialog.get_by_role("button", name="Refund").click()
    expect(dialog).to_be_hidden()
    expect(row).to_contain_text("part refunded CN¥15.00")
    expect(dash.locator("#balance")).to_have_text("CN¥25.00")
    assert api.get("/me", customer).json()["balance"] == 100_000 - 4_000 + 1_500

    dash.get_by_role("button", name="Show").click()
    line = dash.locator("#report tbody tr")
    expect(line).to_have_count(1)
    expect(line).to_contain_text(clerk.handle.title())
    expect(line.locator("td")).to_have_text(
        [clerk.handle.title(), code["id"][-6:], "1", "CN¥40.00", "CN¥15.00", "CN¥25.00"]
    )

    with dash.expect_download() as download:
        dash.get_by_role("button", name="Download CSV").click()
    text = Path(download.value.path()).read_text(encoding="utf-8")
    lines = text.strip().splitlines()
    assert lines[0] == (
        "id,created_at,status,amount,refunded_amount,currency,payer,payee,agent,code_id,"
        "code_label,memo"
    )
    assert any(line.startswith(f"{paid['id']},") and ",4000,1500,CNY," in line for line in lines)


def test_owner_accepts_a_request_and_revokes_an_agent(api: Api, open_tab: Any) -> None:
    """An agent's request shows as pending on the owner's dashboard and turns active on Accept;
    Revoke (after the owner confirms) ends it, and the clerk's counter can no longer pick it."""
    owner, clerk = api.user(), api.user()
    asked = api.post("/agencies", clerk, json={"payee": owner.handle, "label": "Kiosk"})
    assert asked.status_code == 201, asked.text
    dash = open_tab(TABLET, owner).page
    dash.on("dialog", lambda dialog: dialog.accept())
    dash.goto("/dashboard")
    item = dash.locator("#agencies li", has_text="Kiosk")
    expect(item.locator(".badge")).to_have_text("pending")
    item.get_by_role("button", name=re.compile("^Accept")).click()
    expect(item.locator(".badge")).to_have_text("active")

    tablet = open_tab(TABLET, clerk).page
    tablet.goto("/counter")
    expect(tablet.get_by_label("Collect for")).to_contain_text("Kiosk")

    item.get_by_role("button", name=re.compile("^Revoke")).click()
    expect(item.locator(".badge")).to_have_text("revoked")
    expect(tablet.locator("#no-agency")).to_be_visible()
