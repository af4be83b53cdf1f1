"""Overload is refused, not queued: a request that cannot get the database in time is a clean
503 with Retry-After (retry with the same Idempotency-Key) — never a 500, never a long wait,
never a lost or doubled payment."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import psycopg
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.api import Api, User
from tests.conftest import ADMIN_TOKEN
from tests.server import run_cli
from tests.services import SqliteFactory

AMOUNT = 100
PAYMENTS = 24


def test_an_exhausted_connection_pool_is_503(sqlite_factory: SqliteFactory) -> None:
    """While every connection of the SQLite writer pool is held, a write waits out the pool
    timeout and answers 503 unavailable."""
    app = create_app(Settings(database_url=sqlite_factory.create()), migrate_schema=False)
    with TestClient(app) as client:
        writer = app.state.paycode.db.writer
        writer.pool._timeout = 0.2  # the production timeout is a minute; the test cannot wait
        with ExitStack() as held:
            for _ in range(writer.pool.size() - writer.pool.checkedout()):
                held.enter_context(writer.connect())
            response = client.post(
                "/api/v1/accounts",
                json={"handle": "waiting", "display_name": "W", "password": "long enough"},
            )
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "unavailable"
        assert response.headers["Retry-After"] == "1"
        retried = client.post(
            "/api/v1/accounts",
            json={"handle": "waiting", "display_name": "W", "password": "long enough"},
        )
        assert retried.status_code == 201


@contextmanager
def payer_row_locked(database_url: str, account_id: str) -> Iterator[None]:
    """Another client holds what a payment of this payer needs: SQLite's write lock, or the
    payer's row lock on PostgreSQL. Every payment of the payer stalls until the block ends."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        sqlite = sqlite3.connect(url.database or "", isolation_level=None)
        try:
            sqlite.execute("BEGIN IMMEDIATE")
            yield
            sqlite.execute("ROLLBACK")
        finally:
            sqlite.close()
        return
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain) as pg:
        pg.execute("SELECT id FROM account WHERE id = %s FOR UPDATE", (account_id,))
        yield
        pg.rollback()


def pay(client: TestClient, payer: User, payee: User, key: str) -> httpx.Response:
    return client.post(
        "/api/v1/payments",
        json={"payee": payee.handle, "amount": AMOUNT},
        headers={**payer.headers, "Idempotency-Key": key},
    )


def refused_at_once(response: httpx.Response) -> bool:
    return (
        response.status_code == 503
        and response.json()["error"]["code"] == "unavailable"
        and response.headers.get("Retry-After") == "1"
    )


def test_payments_past_the_budget_are_refused_at_once_and_retried_exactly_once(
    database_url: str,
) -> None:
    """While the database is blocked, payments beyond the admitted few are answered 503
    unavailable with Retry-After before the block ends (none waits for it); the admitted ones
    succeed once it ends; retrying every refused key pays it exactly once, replaying an
    admitted key gives the same payment, and the books still balance."""
    settings = Settings(database_url=database_url, admin_token=ADMIN_TOKEN, admission_budget_ms=1)
    with TestClient(create_app(settings, migrate_schema=False)) as client:
        api = Api(client, ADMIN_TOKEN)
        payer = api.user(funds=AMOUNT * PAYMENTS)
        payee = api.user()
        keys = [f"overload-{n}" for n in range(PAYMENTS)]
        first: dict[str, httpx.Response] = {}
        with ThreadPoolExecutor(max_workers=PAYMENTS) as pool:
            with payer_row_locked(database_url, payer.account_id):
                pending: dict[Future[httpx.Response], str] = {
                    pool.submit(pay, client, payer, payee, key): key for key in keys
                }
                # The admitted ones (at most the process's write slots) stall on the block;
                # every other one must come back while it still holds.
                admitted = client.app.state.paycode.admission.slots  # type: ignore[attr-defined]
                while len(pending) > admitted:
                    done, _ = wait(pending, timeout=30, return_when=FIRST_COMPLETED)
                    assert done, "requests queued behind the block instead of being refused"
                    for future in done:
                        first[pending.pop(future)] = future.result()
                answered_while_blocked = dict(first)
            for future, key in pending.items():
                first[key] = future.result(timeout=30)

        assert answered_while_blocked
        assert all(refused_at_once(r) for r in answered_while_blocked.values()), [
            (r.status_code, r.text) for r in answered_while_blocked.values()
        ]
        assert all(r.status_code in (201, 503) for r in first.values())
        refused = [key for key, r in first.items() if r.status_code == 503]
        assert refused

        final: dict[str, Any] = {}
        for key in keys:
            retried = pay(client, payer, payee, key)
            assert retried.status_code == 201, retried.text
            final[key] = retried.json()["id"]
            if first[key].status_code == 201:
                assert first[key].json()["id"] == final[key]
        assert len(set(final.values())) == PAYMENTS

        assert int(api.get("/me", payer).json()["balance"]) == 0
        assert int(api.get("/me", payee).json()["balance"]) == AMOUNT * PAYMENTS
        listed = api.get("/payments?role=payer&limit=200", payer).json()["data"]
        assert sorted(p["id"] for p in listed) == sorted(final.values())
    result = run_cli("verify", "--database-url", database_url)
    assert result.returncode == 0, result.stdout + result.stderr


def refusals_counted(client: TestClient) -> float:
    """The payments answered 503 so far, by /metrics (the registry outlives one app)."""
    name = 'paycode_http_requests_total{method="POST",route="/api/v1/payments",status="503"}'
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_refusal_before_routing_answers_as_the_gate_does_in_the_route(
    sqlite_factory: SqliteFactory,
) -> None:
    """Under overload the guard refuses a gated request before routing; it must be the same
    answer as the gate's own refusal in the route (a wait in line that ran out): status,
    body, Retry-After and the headers every response carries, counted under the route."""
    app = create_app(
        Settings(database_url=sqlite_factory.create(), admin_token=ADMIN_TOKEN),
        migrate_schema=False,
    )
    with TestClient(app) as client:
        api = Api(client, ADMIN_TOKEN)
        payer, payee = api.user(funds=AMOUNT), api.user()
        gate = app.state.paycode.admission
        slots = gate._free
        counted_before = refusals_counted(client)
        # Every slot taken by units that finish fast: a newcomer may wait, and its wait in
        # line runs out because none of them ever gives its slot back.
        gate._free, gate._held, gate.budget = 0, 0.001, 0.05
        try:
            assert not gate.refuses_now()
            in_the_route = pay(client, payer, payee, "gate-1")
            gate.lag = 1.0
            assert gate.refuses_now()
            before_routing = pay(client, payer, payee, "gate-2")
        finally:
            gate._free, gate.lag = slots, 0.0
        for response in (in_the_route, before_routing):
            assert refused_at_once(response), response.text
        assert before_routing.content == in_the_route.content
        ignored = {"x-request-id", "date", "server"}
        assert {k: v for k, v in before_routing.headers.items() if k not in ignored} == {
            k: v for k, v in in_the_route.headers.items() if k not in ignored
        }
        assert before_routing.headers["x-request-id"]
        assert refusals_counted(client) == counted_before + 2
        assert pay(client, payer, payee, "gate-2").status_code == 201
