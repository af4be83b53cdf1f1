"""The dashboard's webhooks section against a real server and a real receiver on 127.0.0.1:
an endpoint added from the page, its secret shown once and copied, a payment delivered and
listed as succeeded, retry, rotation, disable, delete, the page's own words for a refused URL,
and the section wholly in 简体中文."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.api import Api, User
from tests.e2e.conftest import PHONE, TABLET
from tests.e2e.language import assert_in_language
from tests.webhook_receiver import Receiver, until

pytestmark = pytest.mark.browser
CLIPBOARD = ["clipboard-read", "clipboard-write"]
SECRET = re.compile(r"^whsec_[A-Za-z0-9+/=]{32,}$")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    try:
        yield started
    finally:
        started.stop()


def shop(api: Api) -> tuple[User, User, User, dict[str, Any]]:
    owner, clerk = api.user(), api.user()
    customer = api.user(funds=100_000)
    return owner, clerk, customer, api.agency(owner, clerk, label="Till")


def pay(api: Api, clerk: User, customer: User, agency_id: str, amount: int) -> dict[str, Any]:
    code = api.code(clerk, agency_id, amount=amount)
    response = api.post(
        "/payments",
        customer,
        json={"code": code["token"]},
        headers={"Idempotency-Key": f"pay-{code['id']}"},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def take_secret(page: Any) -> str:
    """Copies the secret the dialog shows with its Copy button, checks the clipboard holds it,
    closes the dialog and returns it."""
    dialog = page.locator("#secret-dialog")
    expect(dialog).to_be_visible()
    secret = str(dialog.get_by_label("Secret").input_value())
    assert SECRET.match(secret), secret
    dialog.get_by_role("button", name="Copy").click()
    expect(dialog.locator("#secret-copied")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    dialog.get_by_role("button", name="Done").click()
    expect(dialog).to_be_hidden()
    expect(dialog.get_by_label("Secret")).to_have_value("")
    return secret


def test_endpoint_from_the_dashboard_receives_a_payment_then_rotates_and_disables(
    api: Api, open_tab: Any, receiver: Receiver, artifacts: Path
) -> None:
    """An endpoint added on the dashboard shows its secret once (copied to the clipboard, gone
    from the page and the API afterwards); a payment is delivered to the receiver, verified with
    that copied secret by the standardwebhooks library, and listed as succeeded with one attempt
    and status 200; Retry sends it again with the same webhook-id; rotation shows a new secret
    and a test event then verifies with both; Disable and Enable flip the state on the page and
    in the API; Delete removes it."""
    owner, clerk, customer, agency = shop(api)
    page = open_tab(TABLET, owner, permissions=CLIPBOARD).page
    page.goto("/dashboard")
    url = receiver.url("till")
    form = page.locator("#webhook-form")
    form.get_by_label("Address (URL)").fill(url)
    form.get_by_label("Description").fill("Till system")
    # Only payments: the agency events of shop() came before the endpoint and owe nothing.
    for box in form.get_by_role("checkbox").all():
        box.uncheck()
    form.get_by_label("Payment received").check()
    form.get_by_role("button", name="Add endpoint").click()
    secret = take_secret(page)

    item = page.locator("#webhooks li.webhook")
    expect(item).to_have_count(1)
    expect(item).to_contain_text(url)
    expect(item).to_contain_text("Till system")
    expect(item.locator(".badge")).to_have_text("enabled")
    listed = api.get("/webhooks", owner).json()["data"]
    assert [(e["url"], e["events"], e["enabled"]) for e in listed] == [
        (url, ["payment.succeeded"], True)
    ]
    assert "secret" not in listed[0]
    page.reload()
    expect(page.locator("#webhooks li.webhook")).to_have_count(1)
    assert secret not in page.content()

    paid = pay(api, clerk, customer, agency["id"], 4_000)
    item.get_by_role("button", name=f"Recent deliveries to {url}").click()
    row = item.locator("tr[data-status='succeeded']")
    expect(row).to_have_count(1, timeout=20_000)
    cells = row.locator("td")
    expect(cells.nth(1)).to_have_text("Payment received")
    expect(cells.nth(2)).to_have_text("succeeded")
    expect(cells.nth(3)).to_have_text("1")
    expect(cells.nth(4)).to_have_text("200")
    page.locator(".dash-webhooks").screenshot(path=str(artifacts / "dashboard-webhooks.png"))
    until(lambda: len(receiver.of("till")) == 1, 5, "one delivery")
    first = receiver.of("till")[0]
    body = first.verify(secret)
    assert body["type"] == "payment.succeeded"
    assert body["data"]["id"] == paid["id"]

    row.get_by_role("button", name="Retry the delivery of Payment received").click()
    until(lambda: len(receiver.of("till")) == 2, 15, "the retried delivery")
    again = receiver.of("till")[1]
    assert again.webhook_id == first.webhook_id
    assert again.verify(secret)["data"]["id"] == paid["id"]
    expect(item.locator("tr[data-status='succeeded'] td").nth(3)).to_have_text("2", timeout=15_000)

    page.once("dialog", lambda dialog: dialog.accept())
    item.get_by_role("button", name=f"Make a new secret for {url}").click()
    rotated = take_secret(page)
    assert rotated != secret
    item.get_by_role("button", name=f"Send a test event to {url}").click()
    until(lambda: len(receiver.of("till")) == 3, 15, "the test event")
    test_call = receiver.of("till")[2]
    assert test_call.verify(rotated)["type"] == "webhook.test"
    assert test_call.verifies(secret)  # the previous secret signs too, for 24 h
    expect(item.locator("tr", has_text="Test event")).to_have_attribute(
        "data-status", "succeeded", timeout=15_000
    )

    item.get_by_role("button", name=f"Disable {url}").click()
    expect(item.locator(".badge").first).to_have_text("disabled")
    assert api.get("/webhooks", owner).json()["data"][0]["enabled"] is False
    expect(item.get_by_role("button", name=f"Send a test event to {url}")).to_have_count(0)
    item.get_by_role("button", name=f"Enable {url}").click()
    expect(item.locator(".badge").first).to_have_text("enabled")
    assert api.get("/webhooks", owner).json()["data"][0]["enabled"] is True

    page.once("dialog", lambda dialog: dialog.accept())
    item.get_by_role("button", name=f"Delete {url}").click()
    expect(page.locator("#webhooks li.webhook")).to_have_count(0)
    expect(page.locator("#webhooks-empty")).to_be_visible()
    assert api.get("/webhooks", owner).json()["data"] == []


def test_refused_address_and_limit_show_the_pages_own_words(
    api: Api, open_tab: Any, receiver: Receiver
) -> None:
    """A URL the API refuses (not http(s)) and the eleventh endpoint (webhook_limit) show the
    page's own sentences, never the API's English message; nothing is created by the refusal."""
    owner = api.user()
    for index in range(10):
        made = api.post("/webhooks", owner, json={"url": receiver.url(f"e{index}")})
        assert made.status_code == 201, made.text
    tab = open_tab(TABLET, owner)
    page = tab.page
    page.goto("/dashboard")
    expect(page.locator("#webhooks li.webhook")).to_have_count(10)
    form = page.locator("#webhook-form")
    error = form.locator("#webhook-error")

    form.get_by_label("Address (URL)").fill("ftp://example.com/hook")
    form.get_by_role("button", name="Add endpoint").click()
    expect(error).to_contain_text("This address cannot receive webhooks")
    form.get_by_label("Address (URL)").fill("not a url")
    form.get_by_role("button", name="Add endpoint").click()
    expect(error).to_have_text("That is not a web address.")

    form.get_by_label("Address (URL)").fill(receiver.url("eleventh"))
    form.get_by_role("button", name="Add endpoint").click()
    expect(error).to_have_text(
        "An account has at most 10 webhook endpoints. Delete one you no longer use first."
    )
    expect(page.locator("#secret-dialog")).to_be_hidden()
    assert len(api.get("/webhooks?limit=100", owner).json()["data"]) == 10
    # The browser logs the two refusals the test provoked, and nothing else.
    refused = ("status of 422", "status of 409")
    assert sum(any(r in e for r in refused) for e in tab.errors) == 2, tab.errors
    tab.errors[:] = [e for e in tab.errors if not any(r in e for r in refused)]


def test_webhooks_section_in_simplified_chinese(
    api: Api, open_tab: Any, receiver: Receiver, artifacts: Path
) -> None:
    """On a phone in 简体中文 the whole section — form, event choices, the secret dialog, the
    endpoint's state and buttons, the deliveries table with a succeeded payment — shows no
    English word and no 繁體 character (only the people's data: names, the URL, the secret)."""
    owner, clerk, customer, agency = shop(api)
    page = open_tab(PHONE, owner, locale="zh-CN", permissions=CLIPBOARD).page
    page.goto("/dashboard")
    url = receiver.url("erp")
    form = page.locator("#webhook-form")
    form.get_by_label("网址").fill(url)
    form.get_by_label("说明").fill("记账")
    form.get_by_role("button", name="添加", exact=True).click()
    dialog = page.locator("#secret-dialog")
    expect(dialog).to_be_visible()
    secret = str(dialog.get_by_label("密钥").input_value())
    dialog.get_by_role("button", name="复制").click()
    expect(dialog.locator("#secret-copied")).to_have_text("已复制。")
    people = [name for u in (owner, clerk, customer) for name in (u.handle, u.handle.title())]
    assert_in_language(page, "zh-CN", url, secret, *people, "Till")
    dialog.get_by_role("button", name="完成").click()

    paid = pay(api, clerk, customer, agency["id"], 1_250)
    item = page.locator("#webhooks li.webhook")
    expect(item.locator(".badge")).to_have_text("已启用")
    item.get_by_role("button", name=f"{url} 的最近投递").click()
    row = item.locator("tr", has_text="收到付款")
    expect(row).to_have_attribute("data-status", "succeeded", timeout=20_000)
    expect(row.locator(".badge")).to_have_text("成功")
    until(lambda: len(receiver.of("erp")) >= 1, 5, "a delivery")
    types = [call.verify(secret)["type"] for call in receiver.of("erp")]
    assert "payment.succeeded" in types
    # The payments table and the report name the code by the end of its id.
    assert_in_language(page, "zh-CN", url, *people, "Till", paid["code_id"][-6:])
    page.locator(".dash-webhooks").screenshot(path=str(artifacts / "dashboard-webhooks-zh-CN.png"))
