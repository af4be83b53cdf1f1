"""The whole shop in three browsers at once: the owner's dashboard, the clerk's counter tablet
and the customer's phone (C3–C8)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from PIL import Image
from playwright.sync_api import expect

from tests.api import PASSWORD, Api
from tests.e2e.conftest import PHONE, TABLET

pytestmark = pytest.mark.browser


def decode_qr(png: Path) -> str:
    """The text of the one QR code in a screenshot, read as a phone camera would."""
    found = [r.text for r in zxingcpp.read_barcodes(Image.open(png)) if r.format.name == "QRCode"]
    assert len(found) == 1, f"expected one QR code in {png}, found {found}"
    return found[0]


def issue_two_items(counter: Any) -> None:
    counter.goto("/counter")
    counter.get_by_label("Item 1", exact=True).fill("Flat white")
    counter.get_by_label("Qty").first.fill("2")
    counter.get_by_label("Unit price (CNY)").first.fill("4.50")
    counter.get_by_role("button", name="Add item").click()
    counter.get_by_label("Item 2", exact=True).fill("Croissant")
    counter.get_by_label("Unit price (CNY)").nth(1).fill("3.20")
    expect(counter.locator("#sale-total")).to_have_text("12.20 CNY")
    counter.get_by_role("button", name="Show code").click()
    expect(counter.locator("#code-amount")).to_have_text("12.20 CNY")
    # The QR arrives as an authorised fetch turned into an object URL.
    expect(counter.locator("#code-qr")).to_have_attribute("src", re.compile(r"^blob:"))
    counter.wait_for_function("document.getElementById('code-qr').naturalWidth > 0")


def test_clerk_issues_customer_pays_owner_sees_it(
    api: Api, open_tab: Any, artifacts: Path, server: Any
) -> None:
    """Owner invites a clerk on the dashboard; the clerk's tablet issues a 2-item code; the phone
    opens the URL decoded from a screenshot of the tablet, logs in, checks and pays; the tablet
    turns PAID (amount, payer, items, spoken) without reload and the dashboard lists the
    payment with the clerk's name and code."""
    owner = api.log_in(api.sign_up(display_name="Corner Shop"))
    clerk = api.log_in(api.sign_up(display_name="Alice"))
    customer_handle = api.sign_up(display_name="Carol Customer")
    api.deposit(customer_handle, 50_000)

    dashboard = open_tab(TABLET, owner)
    dash = dashboard.page
    dash.goto("/dashboard")
    dash.get_by_label("Agent handle").fill(clerk.handle)
    dash.get_by_label("Label").fill("Counter 1")
    dash.get_by_role("button", name="Invite").click()
    expect(dash.locator("#agencies")).to_contain_text("Counter 1")
    expect(dash.locator("#live-status")).to_have_text("live")

    tablet = open_tab(TABLET, clerk)
    counter = tablet.page
    counter.add_init_script(
        "window.__spoken = [];speechSynthesis.speak = (u) => window.__spoken.push(u.text);"
    )
    counter.goto("/counter")
    counter.get_by_label("Say payments aloud").check()
    issue_two_items(counter)
    expect(counter.locator("#live-status")).to_have_text("live")
    shot = artifacts / "counter-code.png"
    counter.screenshot(path=str(shot))
    url = decode_qr(shot)
    assert url.startswith(f"{server.base_url}/c/")

    phone = open_tab(PHONE)
    payer = phone.page
    payer.goto(url)
    expect(payer.get_by_role("heading", name="Log in")).to_be_visible()
    login = payer.locator("#login-form")
    login.get_by_label("Handle").fill(customer_handle)
    login.get_by_label("Password").fill(PASSWORD)
    login.get_by_role("button", name="Log in").click()
    expect(payer.locator("#details-title")).to_contain_text(owner.handle)
    expect(payer.locator("#details-agent")).to_contain_text(clerk.handle)
    expect(payer.locator("#details-label")).to_have_text("Counter 1")
    expect(payer.locator("#details-items")).to_contain_text("Flat white")
    expect(payer.locator("#details-items")).to_contain_text("Croissant")
    expect(payer.locator("#details-total")).to_have_text("12.20 CNY")
    payer.screenshot(path=str(artifacts / "payer-details.png"))
    assert payer.url == url, "after login the payer is back on the code's page"

    payer.get_by_role("button", name="Pay 12.20 CNY").click()
    paid_at = time.monotonic()
    expect(counter.locator("#sale-paid")).to_be_visible(timeout=2000)
    assert time.monotonic() - paid_at < 2.5
    expect(counter.locator("#paid-amount")).to_have_text("12.20 CNY")
    expect(counter.locator("#paid-payer")).to_contain_text("Carol Customer")
    expect(counter.locator("#paid-items")).to_contain_text("2 × Flat white")
    expect(counter.locator("#paid-items")).to_contain_text("1 × Croissant")
    assert counter.evaluate("window.__spoken") == ["Paid 12.20 CNY by Carol Customer."]
    expect(counter.locator("#feed .feed-item")).to_have_count(1)
    counter.screenshot(path=str(artifacts / "counter-paid.png"))

    expect(payer.locator("#receipt-amount")).to_have_text("12.20 CNY")
    expect(payer.locator("#receipt-agent")).to_contain_text(clerk.handle)
    payer.screenshot(path=str(artifacts / "payer-receipt.png"))

    row = dash.locator("#payments tbody tr").first
    expect(row).to_contain_text("12.20 CNY", timeout=2000)
    expect(row.locator("td.agent")).to_have_text("Alice")
    expect(dash.locator("#report tbody tr")).to_contain_text("12.20 CNY")
    expect(row.locator("td.code")).to_contain_text("Counter 1")
    expect(dash.locator("#balance")).to_have_text("12.20 CNY")
    dash.screenshot(path=str(artifacts / "dashboard.png"))
