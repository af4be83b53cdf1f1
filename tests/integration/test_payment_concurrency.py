"""Spec §7 and §2 under real concurrency: a running ``paycode serve`` process and parallel
requests over sockets (C4, C8: a dynamic code is paid at most once; money is never lost or
doubled), then ``paycode verify`` over the books."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.api import Api, User
from tests.conftest import ADMIN_TOKEN
from tests.server import run_cli, running_server


@pytest.fixture
def live(database_url: str) -> Iterator[tuple[Api, str]]:
    """A real server on the test database, and an API helper speaking HTTP to it."""
    with (
        # The races are the point: every request of a burst is admitted, however long its
        # wait (tests/integration/test_overload.py pins what a shorter budget refuses).
        running_server(
            database_url, ADMIN_TOKEN, extra_env={"PAYCODE_ADMISSION_BUDGET_MS": "60000"}
        ) as base_url,
        httpx.Client(base_url=base_url, timeout=30) as client,
    ):
        yield Api(client, ADMIN_TOKEN), base_url


def fire(base_url: str, calls: list[Callable[[httpx.Client], httpx.Response]]) -> list[Any]:
    """Run the calls at once, one thread and one connection each, released together."""
    # Bounded: a thread that fails before the barrier breaks it for the others, which then
    # raise instead of waiting for it forever.
    barrier = threading.Barrier(len(calls), timeout=60)

    def one(call: Callable[[httpx.Client], httpx.Response]) -> tuple[int, Any]:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            client.get("/api/v1/receipts/keys")  # open the connection before the race
            barrier.wait()
            response = call(client)
            return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(one, calls))


def pay(user: User, body: dict[str, Any], key: str | None = None) -> Callable[..., Any]:
    headers = dict(user.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return lambda client: client.post("/api/v1/payments", json=body, headers=headers)


def books_are_right(database_url: str) -> None:
    result = run_cli("verify", "--database-url", database_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok")


def balance(api: Api, user: User) -> int:
    return int(api.get("/me", user).json()["balance"])


def all_events(api: Api, user: User) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        body = api.get(f"/events?after={after}&limit=200", user).json()
        events += body["data"]
        if body["next_cursor"] is None:
            return events
        after = int(body["next_cursor"])


def test_twenty_payers_race_one_dynamic_code_and_exactly_one_wins(
    live: tuple[Api, str], database_url: str
) -> None:
    """20 simultaneous payments of one dynamic code: one 201, nineteen 409
    code_already_paid; the payee is credited once and only the winner is debited."""
    api, base_url = live
    payee, agent = api.user(), api.user()
    agency = api.agency(payee, agent)
    code = api.code(agent, agency["id"], "dynamic", amount=900)
    payers = [api.user(funds=1000) for _ in range(20)]
    results = fire(base_url, [pay(p, {"code": code["token"]}) for p in payers])
    statuses = sorted(status for status, _ in results)
    assert statuses == [201] + [409] * 19, results
    assert {body["error"]["code"] for status, body in results if status == 409} == {
        "code_already_paid"
    }
    winner = next(body for status, body in results if status == 201)
    assert balance(api, payee) == 900
    balances = sorted(balance(api, p) for p in payers)
    assert balances == [100] + [1000] * 19
    assert api.get(f"/codes/{code['id']}", agent).json()["paid_payment_id"] == winner["id"]
    books_are_right(database_url)


def test_a_payer_with_money_for_three_gets_exactly_three_of_ten(
    live: tuple[Api, str], database_url: str
) -> None:
    """Ten concurrent direct payments of 100 from a balance of 350: exactly three succeed,
    seven are 409 insufficient_funds, and the balance never goes below zero."""
    api, base_url = live
    payer = api.user(funds=350)
    payees = [api.user() for _ in range(2)]
    calls = [pay(payer, {"payee": payees[n % 2].handle, "amount": 100}) for n in range(10)]
    results = fire(base_url, calls)
    assert sorted(status for status, _ in results) == [201] * 3 + [409] * 7, results
    assert {body["error"]["code"] for status, body in results if status == 409} == {
        "insufficient_funds"
    }
    assert balance(api, payer) == 50
    assert balance(api, payees[0]) + balance(api, payees[1]) == 300
    books_are_right(database_url)


def test_fifty_payments_from_ten_agents_into_one_payee_all_land_with_gapless_seq(
    live: tuple[Api, str], database_url: str
) -> None:
    """50 concurrent payments through the static codes of 10 agents into one payee: all 201,
    the payee's events are numbered 1..n without a gap, each agent saw its own five."""
    api, base_url = live
    payee = api.user()
    agents = [api.user() for _ in range(10)]
    codes = [
        api.code(agent, api.agency(payee, agent)["id"], "static", label=f"till {n}")
        for n, agent in enumerate(agents)
    ]
    payers = [api.user(funds=10_000) for _ in range(10)]
    calls = [
        pay(payers[n % 10], {"code": codes[n // 5]["short_code"], "amount": 100 + n})
        for n in range(50)
    ]
    results = fire(base_url, calls)
    assert [status for status, _ in results] == [201] * 50, results
    assert balance(api, payee) == sum(100 + n for n in range(50))
    events = all_events(api, payee)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(e["type"] == "payment.succeeded" for e in events) == 50
    for n, agent in enumerate(agents):
        mine = [e for e in all_events(api, agent) if e["type"] == "payment.succeeded"]
        assert sorted(e["data"]["amount"] for e in mine) == [100 + n * 5 + i for i in range(5)]
    books_are_right(database_url)


def test_one_idempotency_key_fired_ten_times_at_once_makes_one_payment(
    live: tuple[Api, str], database_url: str
) -> None:
    """The same Idempotency-Key and body sent ten times concurrently: one effect, and all
    ten responses are the same 201 with the same payment."""
    api, base_url = live
    payer, payee = api.user(funds=5000), api.user()
    body = {"payee": payee.handle, "amount": 1200, "memo": "one coffee machine"}
    results = fire(base_url, [pay(payer, body, key="race-key-1") for _ in range(10)])
    assert {status for status, _ in results} == {201}, results
    assert all(result == results[0] for result in results)
    assert balance(api, payer) == 3800
    assert balance(api, payee) == 1200
    assert len(api.get("/payments?role=payer", payer).json()["data"]) == 1
    books_are_right(database_url)
