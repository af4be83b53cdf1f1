"""Browser tests: a real ``paycode serve`` process and Debian's headless Chromium driven by
Playwright. No browser is ever downloaded; without /usr/bin/chromium the tests are unavailable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api import Api, User
from tests.services import free_port, unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "e2e-admin-token-0123456789"
TABLET = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(os.environ.get("PAYCODE_E2E_ARTIFACTS", ROOT / "build" / "e2e-artifacts"))


@dataclass
class Server:
    base_url: str
    database_path: Path
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the browser suite: every test makes its own accounts, so they share it."""
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    root = tmp_path_factory.mktemp("e2e")
    database = root / "paycode.db"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PAYCODE_DATABASE_URL": f"sqlite:///{database}",
        "PAYCODE_ADMIN_TOKEN": ADMIN_TOKEN,
        "PAYCODE_BROKER_URL": "memory://",
        "PAYCODE_PUBLIC_URL": base_url,
        "PAYCODE_LOG_LEVEL": "warning",
        # The dashboard's webhooks are sent to a receiver on 127.0.0.1 over http://.
        "PAYCODE_WEBHOOK_ALLOW_PRIVATE": "1",
    }
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError((root / "server.log").read_text(errors="replace"))
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start within 30 s")
            time.sleep(0.1)
        yield Server(base_url, database, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield client


@pytest.fixture
def api(http: httpx.Client) -> Api:
    return Api(http, ADMIN_TOKEN)


# Package scope, not session: Playwright's sync API keeps an asyncio loop running in this thread
# while it is open, which would break every later test that calls asyncio.run().
@pytest.fixture(scope="package")
def browser(server: Server) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=10_000)
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@dataclass
class Tab:
    """One browser context with one page, and every console error or page error it raised."""

    context: Any
    page: Any
    errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.errors == [], f"console errors: {self.errors}"


def session_storage(base_url: str, user: User, api: Api) -> dict[str, Any]:
    """A browser storage state holding the user's device token, as the login form stores it."""
    me = api.get("/me", user).json()
    value = json.dumps(
        {"token": user.token, "device": {"id": user.device_id}, "account": me},
    )
    return {
        "cookies": [],
        "origins": [
            {"origin": base_url, "localStorage": [{"name": "paycode.session", "value": value}]}
        ],
    }


@pytest.fixture
def open_tab(browser: Any, server: Server, api: Api) -> Iterator[Any]:
    """Opens a fresh context (phone or tablet, logged in as a user or not); after the test,
    every tab must have logged no console error."""
    tabs: list[Tab] = []

    def open_(
        viewport: dict[str, int] = TABLET,
        user: User | None = None,
        locale: str = "en-US",
        **options: Any,
    ) -> Tab:
        """A new context; `locale` is the browser's language (its Accept-Language and Intl)."""
        phone = viewport == PHONE
        context = browser.new_context(
            viewport=viewport,
            base_url=server.base_url,
            is_mobile=phone,
            has_touch=phone,
            accept_downloads=True,
            locale=locale,
            storage_state=session_storage(server.base_url, user, api) if user else None,
            **options,
        )
        # Generous waits: a loaded 2-core machine can be slow; the deadlines that matter to a
        # shop (PAID within 2 s) are asserted with their own timeout.
        context.set_default_timeout(10_000)
        page = context.new_page()
        tab = Tab(context, page)
        page.on(
            "console",
            lambda message: tab.errors.append(message.text) if message.type == "error" else None,
        )
        page.on("pageerror", lambda error: tab.errors.append(str(error)))
        tabs.append(tab)
        return tab

    yield open_
    for tab in tabs:
        tab.context.close()
    for tab in tabs:
        tab.assert_clean()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    folder = ARTIFACTS / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
