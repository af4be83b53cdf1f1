"""/devices (revoke a device; its open pages fall back to the login form at once) and the
payer's receipt whose Ed25519 signature the phone checks (spec §3, §7, §10)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.api import Api, User
from tests.e2e.conftest import PHONE, TABLET
from tests.e2e.language import assert_in_language

pytestmark = pytest.mark.browser


def test_revoking_the_tablet_from_the_phone_logs_the_tablet_out_within_2_s(
    api: Api, open_tab: Any
) -> None:
    """The clerk's phone (繁體) lists both devices, marks itself, and revokes the tablet; the
    tablet's open counter page (简体) shows the login form within 2 s, and its token is dead."""
    handle = api.sign_up(display_name="Alice")
    tablet_user = api.log_in(handle, device_name="Till tablet")
    phone_user = api.log_in(handle, device_name="Alice phone")

    tablet = open_tab(TABLET, tablet_user, locale="zh-CN").page
    tablet.goto("/counter")
    expect(tablet.locator("#live-status")).to_have_attribute("data-state", "live")

    phone = open_tab(PHONE, phone_user, locale="zh-TW").page
    phone.goto("/devices")
    rows = phone.locator("#devices tbody tr")
    expect(rows).to_have_count(2)
    mine = phone.locator(f"tr[data-device-id='{phone_user.device_id}']")
    expect(mine).to_contain_text("本裝置")
    expect(mine).to_contain_text("Alice phone")
    other = phone.locator(f"tr[data-device-id='{tablet_user.device_id}']")
    expect(other).not_to_contain_text("本裝置")
    assert_in_language(phone, "zh-TW", handle, "Alice", "Till tablet", "Alice phone")

    phone.once("dialog", lambda dialog: dialog.accept())
    other.get_by_role("button", name="撤銷 Till tablet").click()
    revoked_at = time.monotonic()
    expect(tablet.locator("#auth")).to_be_visible(timeout=2000)
    assert time.monotonic() - revoked_at < 2.5
    expect(tablet.locator("#login-form")).to_be_visible()
    expect(tablet.get_by_role("heading", name="登录")).to_be_visible()
    expect(phone.locator("#devices tbody tr")).to_have_count(1)
    assert api.get("/me", tablet_user).status_code == 401
    assert api.get("/me", phone_user).status_code == 200


def shop_code(api: Api, amount: int) -> tuple[User, dict[str, Any]]:
    owner, clerk = api.user(), api.user()
    customer = api.user(funds=100_000)
    agency = api.agency(owner, clerk, label="Till")
    response = api.post(
        "/codes", clerk, json={"agency_id": agency["id"], "kind": "dynamic", "amount": amount}
    )
    assert response.status_code == 201, response.text
    return customer, dict(response.json())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pay_and_read_receipt(api: Api, open_tab: Any) -> tuple[Any, list[str]]:
    """A 简体 phone on a ¥12.20 code's page, ready to pay, and the people's names it shows."""
    customer, code = shop_code(api, 1220)
    page = open_tab(PHONE, customer, locale="zh-CN").page
    page.goto(f"/c/{code['token']}")
    expect(page.locator("#details-total")).to_have_text("¥12.20")
    people = [customer.handle, customer.handle.title()]
    for party in (code["payee"], code["agent"]):
        people += [party["handle"], party["display_name"]]
    return page, people


def test_a_good_receipt_shows_verified(api: Api, open_tab: Any, artifacts: Path) -> None:
    """After paying, the phone checks the receipt's signature in the browser (WebCrypto
    Ed25519) against /receipts/keys and says it verified, in the page's language."""
    page, people = pay_and_read_receipt(api, open_tab)
    page.get_by_role("button", name="付款 ¥12.20").click()
    check = page.locator("#receipt-check")
    expect(check).to_have_attribute("data-state", "verified")
    expect(check).to_have_attribute("data-method", "webcrypto")
    expect(check).to_have_text("签名已验证：此收据由平台签发。")
    assert_in_language(page, "zh-CN", *people)
    page.screenshot(path=str(artifacts / "payer-receipt-zh-CN.png"))


def test_without_webcrypto_ed25519_the_server_verifies(api: Api, open_tab: Any) -> None:
    """A browser without Ed25519 in WebCrypto asks POST /receipts/verify instead."""
    page, _people = pay_and_read_receipt(api, open_tab)
    page.evaluate(
        """() => {
          const original = crypto.subtle.importKey.bind(crypto.subtle);
          crypto.subtle.importKey = (format, key, algorithm, ...rest) =>
            (algorithm && algorithm.name === 'Ed25519')
              ? Promise.reject(new DOMException('unsupported', 'NotSupportedError'))
              : original(format, key, algorithm, ...rest);
        }"""
    )
    verified: list[str] = []
    page.on("request", lambda r: verified.append(r.url) if "/receipts/verify" in r.url else None)
    page.get_by_role("button", name="付款 ¥12.20").click()
    check = page.locator("#receipt-check")
    expect(check).to_have_attribute("data-state", "verified")
    expect(check).to_have_attribute("data-method", "server")
    assert len(verified) == 1


@pytest.mark.parametrize("alteration", ["signed amount", "shown amount"])
def test_an_altered_receipt_shows_the_warning(api: Api, open_tab: Any, alteration: str) -> None:
    """A receipt whose signed payload was changed on its way to the page fails the signature;
    one whose shown payment differs from what was signed fails the facts check: both show the
    warning, never 'verified'."""
    page, _people = pay_and_read_receipt(api, open_tab)

    def alter(route: Any) -> None:
        response = route.fetch()
        payment = response.json()
        if alteration == "signed amount":
            facts = json.loads(unb64url(payment["receipt"]["payload"]))
            facts["amount"] = 122_000
            payment["receipt"]["payload"] = b64url(
                json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()
            )
            payment["amount"] = 122_000
        else:
            payment["amount"] = 122_000
        route.fulfill(response=response, json=payment)

    page.route("**/api/v1/payments", alter)
    page.get_by_role("button", name="付款 ¥12.20").click()
    expect(page.locator("#receipt-amount")).to_have_text("¥1,220.00")
    check = page.locator("#receipt-check")
    expect(check).to_have_attribute("data-state", "invalid")
    expect(check).to_have_text("警告：此收据的签名验证失败，请勿作为付款凭证。")
