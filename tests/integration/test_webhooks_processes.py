"""Spec §11 across processes on PostgreSQL + Redis: a delivery whose sending process is killed
mid-attempt is delivered by another process, and with two processes sending at once no
delivery ever has two attempts in flight (leases taken with FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api import Api, User
from tests.cluster import postgres_and_redis
from tests.conftest import ADMIN_TOKEN
from tests.realtime_server import ServeProcess
from tests.server import ROOT
from tests.services import PostgresFactory
from tests.webhook_receiver import Call, Receiver, until

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

# Each server sends on its own event loop: the process a test kills is the one that sends.
ENV = {"PAYCODE_WEBHOOK_ALLOW_PRIVATE": "1", "PAYCODE_WEBHOOK_WORKER": "on"}


@pytest.fixture
def backing(pg_factory: PostgresFactory) -> Iterator[tuple[str, str]]:
    with postgres_and_redis(pg_factory) as (database_url, redis):
        yield database_url, redis.url


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def shop(api: Api) -> tuple[User, User, str]:
    payee, agent, payer = api.user(), api.user(), api.user(funds=1_000_000)
    agency = api.agency(payee, agent)
    return payee, payer, api.code(agent, agency["id"], kind="static")["token"]


def register(api: Api, user: User, url: str) -> dict[str, Any]:
    response = api.post("/webhooks", user, json={"url": url, "events": ["payment.succeeded"]})
    assert response.status_code == 201, response.text
    return dict(response.json())


def attempts_made(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("paycode_webhook_attempts_total{")
    )


def test_a_delivery_interrupted_by_sigkill_is_delivered_by_another_process(
    backing: tuple[str, str], receiver: Receiver
) -> None:
    """The first attempt reaches the receiver, which holds it; its process is killed with
    SIGKILL. A second process takes the delivery once the lease runs out and delivers it with
    the same webhook-id; the history shows the interrupted attempt and the successful one."""
    database_url, broker_url = backing

    async def hold_first(_call: Call, index: int) -> int:
        if index == 0:
            await asyncio.sleep(60)
        return 200

    receiver.behaviours["held"] = hold_first
    doomed = ServeProcess(database_url, broker_url, ADMIN_TOKEN, ENV).start()
    survivor = ServeProcess(database_url, broker_url, ADMIN_TOKEN, ENV)
    try:
        with httpx.Client(base_url=doomed.url, timeout=30) as http:
            api = Api(http, ADMIN_TOKEN)
            payee, payer, code = shop(api)
            hook = register(api, payee, receiver.url("held"))
            paid = api.post("/payments", payer, json={"code": code, "amount": 700})
            assert paid.status_code == 201
            until(lambda: len(receiver.of("held")) == 1, 15, "the first attempt arrived")
        doomed.kill()
        killed_at = time.monotonic()
        survivor.start()
        until(lambda: len(receiver.of("held")) == 2, 40, "another process delivered it")
        # Not before the dead process's lease (its attempt's 10 s timeout + 5 s) ran out.
        assert time.monotonic() - killed_at > 5
        first, second = receiver.of("held")
        assert first.webhook_id == second.webhook_id
        for call in (first, second):
            assert call.verify(hook["secret"])["data"]["id"] == paid.json()["id"]
        with httpx.Client(base_url=survivor.url, timeout=30) as http:
            api = Api(http, ADMIN_TOKEN)

            def settled() -> dict[str, Any]:
                found = api.get(f"/webhooks/{hook['id']}/deliveries", payee).json()["data"]
                return dict(found[0])

            until(lambda: settled()["status"] == "succeeded", 10)
            delivery = settled()
            assert delivery["attempts"] == 2
            assert [a["outcome"] for a in delivery["attempt_log"]] == [
                "interrupted",
                "succeeded",
            ]
    finally:
        doomed.kill()
        survivor.stop()


def test_two_processes_never_have_two_attempts_of_one_delivery_in_flight(
    backing: tuple[str, str], receiver: Receiver
) -> None:
    """Both processes send deliveries of the same endpoints; every first attempt is answered
    500 after a pause, the retry 200. Each webhook-id gets exactly two attempts, never two at
    once, and every one verifies."""
    database_url, broker_url = backing
    seen: dict[str, int] = {}

    async def fail_first(call: Call, _index: int) -> int:
        count = seen[call.webhook_id] = seen.get(call.webhook_id, 0) + 1
        await asyncio.sleep(0.3)
        return 500 if count == 1 else 200

    receiver.behaviours["shared0"] = receiver.behaviours["shared1"] = fail_first
    first = ServeProcess(database_url, broker_url, ADMIN_TOKEN, ENV).start()
    second = ServeProcess(database_url, broker_url, ADMIN_TOKEN, ENV).start()
    try:
        with (
            httpx.Client(base_url=first.url, timeout=30) as a,
            httpx.Client(base_url=second.url, timeout=30) as b,
        ):
            api = Api(a, ADMIN_TOKEN)
            payees = []
            for n in range(2):
                payee, payer, code = shop(api)
                hook = register(api, payee, receiver.url(f"shared{n}"))
                payees.append((payer, code, hook))
            clients = itertools.cycle([Api(a, ADMIN_TOKEN), Api(b, ADMIN_TOKEN)])
            payments = 0
            for payer, code, _hook in payees:
                for i in range(10):
                    answer = next(clients).post(
                        "/payments", payer, json={"code": code, "amount": 100 + i}
                    )
                    assert answer.status_code == 201, answer.text
                    payments += 1

            def ids() -> dict[str, int]:
                counts: dict[str, int] = {}
                for call in receiver.of("shared0") + receiver.of("shared1"):
                    counts[call.webhook_id] = counts.get(call.webhook_id, 0) + 1
                return counts

            until(
                lambda: len(ids()) == payments and all(n >= 2 for n in ids().values()),
                40,
                "every delivery retried once and done",
            )
            time.sleep(1.0)  # a duplicate attempt would have arrived by now
            assert sorted(set(ids().values())) == [2]
            assert max(receiver.max_in_flight[i] for i in ids()) == 1
            for n, (_payer, _code, hook) in enumerate(payees):
                for call in receiver.of(f"shared{n}"):
                    assert call.verify(hook["secret"])["type"] == "payment.succeeded"
            # Both processes did send: each one's own counters show attempts.
            for process in (a, b):
                metrics = process.get("/metrics").text
                assert attempts_made(metrics) > 0, metrics
    finally:
        first.stop()
        second.stop()


def test_a_separate_webhooks_process_sends_for_servers_that_do_not(
    backing: tuple[str, str], receiver: Receiver
) -> None:
    """With PAYCODE_WEBHOOK_WORKER=off the server sends nothing itself; `paycode webhooks`,
    started later against the same database, delivers what was owed, verified."""
    database_url, broker_url = backing
    server = ServeProcess(
        database_url, broker_url, ADMIN_TOKEN, {**ENV, "PAYCODE_WEBHOOK_WORKER": "off"}
    ).start()
    sender: subprocess.Popen[bytes] | None = None
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            api = Api(http, ADMIN_TOKEN)
            payee, payer, code = shop(api)
            hook = register(api, payee, receiver.url("apart"))
            paid = api.post("/payments", payer, json={"code": code, "amount": 900})
            assert paid.status_code == 201
            time.sleep(1.5)
            assert receiver.of("apart") == []
            env = {**os.environ, **ENV, "PAYCODE_DATABASE_URL": database_url}
            sender = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "webhooks"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            until(lambda: len(receiver.of("apart")) == 1, 30, "the webhooks process delivered")
            body = receiver.of("apart")[0].verify(hook["secret"])
            assert body["data"]["id"] == paid.json()["id"]
    finally:
        if sender is not None:
            sender.terminate()
            assert sender.wait(timeout=20) == 0
        server.stop()
