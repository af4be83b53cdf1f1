"""The three main pages at the moments the README shows, in English and in 简体中文: the payer's
phone before paying, the counter's PAID and the owner's dashboard. Each shot is checked to be
wholly in its language first; `docs/screenshots/` holds copies of these artifacts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.api import Api
from tests.e2e.conftest import PHONE, TABLET
from tests.e2e.language import assert_in_language

pytestmark = pytest.mark.browser

# The words each page is driven by, per language: the same catalog entries the page shows.
WORDS = {
    "en-US": {
        "lang": "en", "item": "Item {n}", "qty": "Qty", "price": "Unit price (CN¥)",
        "add": "Add item", "show": "Show code", "pay": "Pay {amount}", "money": "CN¥{}",
    },
    "zh-CN": {
        "lang": "zh-CN", "item": "商品 {n}", "qty": "数量", "price": "单价（¥）",
        "add": "添加商品", "show": "生成收款码", "pay": "付款 {amount}", "money": "¥{}",
    },
}  # fmt: skip


@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_main_pages_for_the_readme(api: Api, open_tab: Any, artifacts: Path, locale: str) -> None:
    """The shop story once per language, with the pages checked for their language and money
    format, and a screenshot of each main page."""
    words = WORDS[locale]
    suffix = "" if locale == "en-US" else f"-{locale}"
    owner = api.log_in(api.sign_up(display_name="Corner Shop"))
    clerk = api.log_in(api.sign_up(display_name="Alice"))
    customer = api.log_in(api.sign_up(display_name="Carol Customer"))
    api.deposit(customer.handle, 50_000)
    api.agency(owner, clerk, label="Counter 1")
    people = [owner.handle, clerk.handle, customer.handle, "Corner Shop", "Alice"]
    people += ["Carol Customer", "Counter 1", "Flat white", "Croissant"]

    dash = open_tab(TABLET, owner, locale=locale).page
    dash.goto("/dashboard")
    counter = open_tab(TABLET, clerk, locale=locale).page
    counter.goto("/counter")
    counter.get_by_label(words["item"].format(n=1), exact=True).fill("Flat white")
    counter.get_by_label(words["qty"]).first.fill("2")
    counter.get_by_label(words["price"]).first.fill("4.50")
    counter.get_by_role("button", name=words["add"]).click()
    counter.get_by_label(words["item"].format(n=2), exact=True).fill("Croissant")
    counter.get_by_label(words["price"]).nth(1).fill("3.20")
    counter.get_by_role("button", name=words["show"]).click()
    expect(counter.locator("#code-qr")).to_have_attribute("src", re.compile(r"^blob:"))
    code = api.get("/codes?role=agent&status=active", clerk).json()["data"][0]
    people.append(code["id"][-6:])  # the dashboard names a code by its id's tail

    phone = open_tab(PHONE, customer, locale=locale).page
    phone.goto(f"/c/{code['token']}")
    total = words["money"].format("12.20")
    expect(phone.locator("#details-total")).to_have_text(total)
    assert_in_language(phone, words["lang"], *people)
    phone.screenshot(path=str(artifacts / f"payer-phone{suffix}.png"))

    phone.get_by_role("button", name=words["pay"].format(amount=total)).click()
    expect(counter.locator("#paid-amount")).to_have_text(total)
    expect(counter.locator("#feed .feed-item")).to_have_count(1)
    assert_in_language(counter, words["lang"], *people)
    counter.screenshot(path=str(artifacts / f"counter-paid{suffix}.png"))

    expect(dash.locator("#payments tbody tr")).to_have_count(1)
    expect(dash.locator("#balance")).to_have_text(total)
    expect(dash.locator("#report tbody tr")).to_contain_text(total)
    assert_in_language(dash, words["lang"], *people)
    dash.screenshot(path=str(artifacts / f"dashboard{suffix}.png"))
