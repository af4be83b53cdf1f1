"""Every page: security headers and CSP, keyboard use, labels, both viewports, no console
errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.api import PASSWORD, Api
from tests.e2e.conftest import PHONE, TABLET

pytestmark = pytest.mark.browser

PAGES = ["/", "/counter", "/pay", "/dashboard", "/devices", "/c/not-a-real-token"]

# Every control that is not hidden must have a name a screen reader can say.
UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter((e) => e.offsetParent !== null)
  .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                 && !(e.tagName === 'BUTTON' && e.textContent.trim()))
  .map((e) => e.id || e.outerHTML.slice(0, 80))"""


@pytest.mark.parametrize("path", PAGES)
def test_security_headers_on_every_page(http: httpx.Client, path: str) -> None:
    """Each page forbids inline script, framing and Referer leaks, and has no inline script or
    inline event handler in its HTML."""
    response = http.get(path)
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    directives = {part.split()[0]: part.split()[1:] for part in csp.split("; ")}
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert directives["form-action"] == ["'self'"]
    assert set(directives["img-src"]) == {"'self'", "blob:", "data:"}
    assert "'self'" in directives["connect-src"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    html = response.text
    # The one non-src script is the page's message catalog: a JSON data block, never run.
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [
        '<script type="application/json" id="i18n-messages">'
    ]
    assert re.findall(r"\son[a-z]+\s*=", html) == []
    assert "style=" not in html


def test_injected_inline_script_does_not_run(open_tab: Any, api: Api) -> None:
    """Under the page's CSP an inline <script> and an inline handler added to the DOM never
    execute, and the browser reports the violation."""
    tab = open_tab(TABLET, api.user())
    page = tab.page
    page.goto("/")
    expect(page.locator("#home-name")).not_to_be_empty()
    page.evaluate(
        """() => {
          window.__violations = 0;
          document.addEventListener('securitypolicyviolation', () => window.__violations++);
          const s = document.createElement('script');
          s.textContent = 'window.__inline = 1';
          document.body.append(s);
          const img = document.createElement('img');
          img.setAttribute('onerror', 'window.__handler = 1');
          img.src = 'data:,broken';
          document.body.append(img);
        }"""
    )
    page.wait_for_function("window.__violations >= 2")
    assert page.evaluate("[window.__inline, window.__handler]") == [None, None]
    # The refusals are what this test provokes; Chromium reports each on the console.
    tab.errors[:] = [e for e in tab.errors if "Content Security Policy" not in e]


def test_keyboard_sign_up_log_out_and_log_in(open_tab: Any, api: Api) -> None:
    """With the keyboard alone a person signs up, logs out and logs back in on `/`; the home
    links the pages for the account."""
    handle = f"kb{api.sign_up()}"
    page = open_tab(TABLET).page
    page.goto("/")
    expect(page.locator("#login-handle")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#login-password")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Log in")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#auth-switch")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
    page.locator("#signup-handle").focus()
    page.keyboard.type(handle)
    page.keyboard.press("Tab")
    page.keyboard.type("Kay Board")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#home-name")).to_have_text("Kay Board")
    expect(page.locator("#home-balance")).to_have_text("CN¥0.00")
    for name in ("Counter", "Pay", "Dashboard"):
        expect(page.locator(".tiles").get_by_role("link", name=re.compile(name))).to_be_visible()

    page.get_by_role("button", name="Log out").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert page.evaluate("localStorage.getItem('paycode.session')") is None
    page.keyboard.type(handle)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#home-name")).to_have_text("Kay Board")
    assert "token" not in page.url and page.context.cookies() == []


@pytest.mark.parametrize("viewport", [PHONE, TABLET], ids=["phone", "tablet"])
def test_every_page_fits_and_is_labelled(
    open_tab: Any, api: Api, viewport: dict[str, int], artifacts: Path
) -> None:
    """At 390×844 and 1280×800 every page renders without horizontal scrolling, every visible
    control has a label, and nothing is logged to the console."""
    owner, clerk = api.user(), api.user()
    api.agency(owner, clerk, label="Till 1")
    tab = open_tab(viewport, clerk)
    page = tab.page
    for path in ["/", "/counter", "/pay", "/dashboard", "/devices"]:
        page.goto(path)
        expect(page.locator("#app")).to_be_visible()
        page.wait_for_load_state("networkidle")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px"
        assert page.evaluate(UNLABELLED) == [], f"unlabelled controls on {path}"
        name = path.strip("/") or "home"
        page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
