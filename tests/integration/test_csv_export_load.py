"""A shop's export is its books: under load it completes or is refused before its first byte
(503 with Retry-After), never cut short after the status line. The load is the pool running
dry: every other connection of the server's pool held by other work."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.testclient import TestClient

from app.main import create_app
from app.services import payments as payments_service
from app.settings import Settings
from tests.api import Api, User
from tests.conftest import ADMIN_TOKEN

PAYMENTS = 7


@pytest.fixture
def small_pool(settings: Settings) -> Settings:
    # One pooled connection (two on PostgreSQL, with its overflow), and half a second's wait
    # for one: the pool runs dry at once.
    return replace(settings, extra={"pool_size": 1, "pool_timeout": 0.5})


@pytest.fixture
def shop(
    small_pool: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, User]]:
    # Pages of two rows, so the export reads four pages.
    monkeypatch.setattr(payments_service, "CSV_PAGE", 2)
    with TestClient(create_app(small_pool, migrate_schema=False)) as client:
        api = Api(client, ADMIN_TOKEN)
        payee, agent, payer = api.user(), api.user(), api.user(funds=100_000)
        static = api.code(payee, api.agency(payee, agent)["id"], kind="static")
        for amount in range(100, 100 + PAYMENTS):
            paid = api.post("/payments", payer, json={"code": static["token"], "amount": amount})
            assert paid.status_code == 201, paid.text
        yield client, payee


def hold_every_free_connection(client: TestClient, stack: ExitStack) -> int:
    """Check out pooled connections until the pool has none left; they stay out until the
    stack closes. Returns how many were taken."""
    engine = client.app.state.paycode.db.reader  # type: ignore[attr-defined]
    taken = 0
    while True:
        try:
            stack.enter_context(engine.connect())
        except PoolTimeout:
            return taken
        taken += 1


def export(client: TestClient, user: User, on_first_chunk: Any) -> tuple[int, dict[str, str], str]:
    """GET /api/v1/payments.csv straight through the ASGI app, in the app's own event loop,
    calling ``on_first_chunk`` (in a thread) once the first body chunk has been sent."""

    async def run() -> tuple[int, dict[str, str], str]:
        headers = [(b"authorization", f"Bearer {user.token}".encode())]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/api/v1/payments.csv",
            "raw_path": b"/api/v1/payments.csv",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), *headers],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "state": {},
        }
        status = 0
        response_headers: dict[str, str] = {}
        body: list[bytes] = []
        sent_request = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers.update(
                    (k.decode().lower(), v.decode()) for k, v in message["headers"]
                )
            elif message["type"] == "http.response.body":
                first = not body
                body.append(message.get("body", b""))
                if first and on_first_chunk is not None:
                    await asyncio.to_thread(on_first_chunk)

        await client.app(scope, receive, send)
        return status, response_headers, b"".join(body).decode()

    return client.portal.call(run)  # type: ignore[union-attr]


def test_an_export_started_completes_when_the_pool_runs_dry(
    shop: tuple[TestClient, User],
) -> None:
    """Once the first chunk is out, every other pooled connection is taken by other work: the
    export still ends with every payment (it reads all its pages on the connection it holds,
    from one snapshot), instead of waiting for the pool and breaking off mid-file."""
    client, payee = shop
    with ExitStack() as held:
        status, _headers, text = export(
            client, payee, lambda: hold_every_free_connection(client, held)
        )
    assert status == 200
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][0] == "id"
    assert len(rows) == 1 + PAYMENTS
    assert sorted(int(row[3]) for row in rows[1:]) == list(range(100, 100 + PAYMENTS))


def test_an_export_that_cannot_start_is_503_before_its_first_byte(
    shop: tuple[TestClient, User],
) -> None:
    """With no connection to be had, the export is refused whole: 503 with Retry-After and
    the error body, never a 200 whose body stops. Afterwards it completes."""
    client, payee = shop
    with ExitStack() as held:
        assert hold_every_free_connection(client, held) >= 1
        status, headers, text = export(client, payee, None)
        assert status == 503, text
        assert int(headers["retry-after"]) >= 1
        assert '"code":"unavailable"' in text
    status, _headers, text = export(client, payee, None)
    assert status == 200
    assert len(list(csv.reader(io.StringIO(text)))) == 1 + PAYMENTS
