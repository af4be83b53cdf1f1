"""The whole shop in three browsers at once, each in its own language: the clerk's counter
tablet in 简体中文, the customer's phone in 繁體中文 and the owner's dashboard in English
(C3–C8, spec §10)."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import zxingcpp
from PIL import Image
from playwright.sync_api import expect

from tests.api import PASSWORD, Api
from tests.e2e.conftest import PHONE, TABLET
from tests.e2e.language import assert_in_language

pytestmark = pytest.mark.browser

# The spy records what the counter would say and in which language, instead of saying it.
SPEECH_SPY = """
window.__spoken = [];
speechSynthesis.speak = (u) => window.__spoken.push({ text: u.text, lang: u.lang });
"""


def decode_qr(png: Path) -> str:
    """The text of the one QR code in a screenshot, read as a phone camera would."""
    found = [r.text for r in zxingcpp.read_barcodes(Image.open(png)) if r.format.name == "QRCode"]
    assert len(found) == 1, f"expected one QR code in {png}, found {found}"
    return found[0]


def issue_two_items(counter: Any) -> None:
    """On a 简体 tablet: two items, a running total in yuan as 简体 writes it, then the code."""
    counter.get_by_label("商品 1", exact=True).fill("Flat white")
    counter.get_by_label("数量").first.fill("2")
    counter.get_by_label("单价（¥）").first.fill("4.50")
    counter.get_by_role("button", name="添加商品").click()
    counter.get_by_label("商品 2", exact=True).fill("Croissant")
    counter.get_by_label("单价（¥）").nth(1).fill("3.20")
    expect(counter.locator("#sale-total")).to_have_text("¥12.20")
    counter.get_by_role("button", name="生成收款码").click()
    expect(counter.locator("#code-amount")).to_have_text("¥12.20")
    # The QR arrives as an authorised fetch turned into an object URL.
    expect(counter.locator("#code-qr")).to_have_attribute("src", re.compile(r"^blob:"))
    counter.wait_for_function("document.getElementById('code-qr').naturalWidth > 0")


def local_time(iso: str, zone: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZoneInfo(zone))


def test_clerk_issues_customer_pays_owner_sees_it_in_three_languages(
    api: Api, open_tab: Any, artifacts: Path, server: Any
) -> None:
    """Owner (en-US) invites a clerk; the clerk's tablet (zh-CN) issues a 2-item code; the
    phone (zh-TW) opens the URL decoded from a screenshot of the tablet, logs in, checks and
    pays; the tablet turns PAID and says 「收款 12.20 元」 in zh-CN once; the dashboard lists
    it. Each page is in its language with no string of another, money and times written for
    its locale and time zone; the owner's switch to 简体中文 is remembered after a reload."""
    owner = api.log_in(api.sign_up(display_name="Corner Shop"))
    clerk = api.log_in(api.sign_up(display_name="Alice"))
    customer_handle = api.sign_up(display_name="Carol Customer")
    api.deposit(customer_handle, 50_000)
    people = [owner.handle, clerk.handle, customer_handle, "Corner Shop", "Alice"]
    people += ["Carol Customer", "Counter 1", "Flat white", "Croissant"]

    dashboard = open_tab(TABLET, owner, locale="en-US", timezone_id="America/New_York")
    dash = dashboard.page
    dash.goto("/dashboard")
    dash.get_by_label("Agent handle").fill(clerk.handle)
    dash.get_by_label("Label").fill("Counter 1")
    dash.get_by_role("button", name="Invite").click()
    expect(dash.locator("#agencies")).to_contain_text("Counter 1")
    expect(dash.locator("#live-status")).to_have_attribute("data-state", "live")

    tablet = open_tab(TABLET, clerk, locale="zh-CN", timezone_id="Asia/Shanghai")
    counter = tablet.page
    counter.add_init_script(SPEECH_SPY)
    counter.goto("/counter")
    expect(counter.locator("#live-status")).to_have_text("实时")
    counter.get_by_label("语音播报收款").check()
    assert_in_language(counter, "zh-CN", *people)
    issue_two_items(counter)
    shot = artifacts / "counter-code.png"
    counter.screenshot(path=str(shot))
    url = decode_qr(shot)
    assert url.startswith(f"{server.base_url}/c/")

    phone = open_tab(PHONE, locale="zh-TW", timezone_id="Asia/Taipei")
    payer = phone.page
    payer.goto(url)
    expect(payer.get_by_role("heading", name="登入")).to_be_visible()
    assert_in_language(payer, "zh-TW", *people)
    login = payer.locator("#login-form")
    login.get_by_label("帳號").fill(customer_handle)
    login.get_by_label("密碼").fill("wrong password")
    login.get_by_role("button", name="登入").click()
    # The API's English message is never shown: the page's own words for invalid_credentials.
    expect(payer.locator("#login-error")).to_have_text("帳號或密碼錯誤。")
    phone.errors[:] = [e for e in phone.errors if "status of 401" not in e]  # the refused login
    login.get_by_label("密碼").fill(PASSWORD)
    login.get_by_role("button", name="登入").click()
    expect(payer.locator("#details-title")).to_contain_text(owner.handle)
    expect(payer.locator("#details-agent")).to_contain_text(clerk.handle)
    expect(payer.locator("#details-agent")).to_contain_text("代收：")
    expect(payer.locator("#details-label")).to_have_text("Counter 1")
    expect(payer.locator("#details-items")).to_contain_text("Flat white")
    expect(payer.locator("#details-total")).to_have_text("CN¥12.20")
    # A Taiwan deployment's own currency, as this page writes it: the dollar named.
    to_money = "async (m) => (await import('/static/js/money.js')).formatMoney(m, 'TWD')"
    assert payer.evaluate(to_money, 1220) == "NT$12.20"
    assert payer.evaluate(to_money, 100_000_000_000_000) == "NT$1,000,000,000,000.00"
    assert_in_language(payer, "zh-TW", *people)
    payer.screenshot(path=str(artifacts / "payer-details.png"))
    assert payer.url == url, "after login the payer is back on the code's page"

    payer.get_by_role("button", name="付款 CN¥12.20").click()
    paid_at = time.monotonic()
    expect(counter.locator("#sale-paid")).to_be_visible(timeout=2000)
    assert time.monotonic() - paid_at < 2.5
    expect(counter.locator("#paid-amount")).to_have_text("¥12.20")
    expect(counter.locator("#paid-payer")).to_contain_text("Carol Customer")
    expect(counter.locator("#paid-items")).to_contain_text("2 × Flat white")
    expect(counter.locator("#paid-items")).to_contain_text("1 × Croissant")
    expect(counter.locator("#feed .feed-item")).to_have_count(1)
    assert counter.evaluate("window.__spoken") == [{"text": "收款 12.20 元", "lang": "zh-CN"}]
    assert_in_language(counter, "zh-CN", *people)
    counter.screenshot(path=str(artifacts / "counter-paid.png"))

    payment = api.get("/payments?role=agent&limit=1", clerk).json()["data"][0]
    people.append(payment["code_id"][-6:])  # the dashboard names a code by its id's tail
    shanghai = local_time(payment["created_at"], "Asia/Shanghai")
    expect(counter.locator("#feed time")).to_have_text(shanghai.strftime("%H:%M:%S"))

    expect(payer.locator("#receipt-amount")).to_have_text("CN¥12.20")
    expect(payer.locator("#receipt-agent")).to_contain_text(clerk.handle)
    expect(payer.locator("#receipt-check")).to_have_attribute("data-state", "verified")
    taipei = local_time(payment["created_at"], "Asia/Taipei")
    # 繁體 writes the date first, then the part of the day (上午, 下午, 晚上, …) and a 12-hour time.
    when = (
        f"{taipei.year}年{taipei.month}月{taipei.day}日 \\D+{taipei.hour % 12 or 12}:{taipei:%M:%S}"
    )
    expect(payer.locator("#receipt-time")).to_have_text(re.compile(f"^{when}$"))
    assert_in_language(payer, "zh-TW", *people)
    payer.screenshot(path=str(artifacts / "payer-receipt.png"))

    row = dash.locator("#payments tbody tr").first
    expect(row).to_contain_text("CN¥12.20", timeout=2000)
    expect(row.locator("td.agent")).to_have_text("Alice")
    expect(dash.locator("#report tbody tr")).to_contain_text("CN¥12.20")
    expect(row.locator("td.code")).to_contain_text("Counter 1")
    expect(dash.locator("#balance")).to_have_text("CN¥12.20")
    new_york = local_time(payment["created_at"], "America/New_York")
    expect(row.locator("time")).to_have_text(new_york.strftime("%I:%M:%S %p"))
    assert_in_language(dash, "en", *people)
    dash.screenshot(path=str(artifacts / "dashboard.png"))

    # The spoken confirmation is said once: a reconnect's replay and a reload say nothing.
    counter.evaluate("window.__spoken.length = 0")
    counter.reload()
    expect(counter.locator("#feed .feed-item")).to_have_count(1)
    counter.get_by_label("语音播报收款").wait_for()
    assert counter.evaluate("window.__spoken") == []

    # The owner picks 简体中文: the page and every later one stay in it on this device.
    dash.get_by_label("Language").select_option("zh-CN")
    expect(dash.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(dash.locator("#balance")).to_have_text("¥12.20")
    dash.reload()
    expect(dash.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(dash.get_by_role("heading", name="收到的付款")).to_be_visible()
    expect(dash.locator("#payments tbody tr").first).to_contain_text("¥12.20")
    expect(dash.locator("#live-status")).to_have_text("实时")
    assert_in_language(dash, "zh-CN", *people)
    dash.screenshot(path=str(artifacts / "dashboard-zh-CN.png"))
    dash.goto("/devices")
    expect(dash.get_by_role("heading", name="设备")).to_be_visible()
