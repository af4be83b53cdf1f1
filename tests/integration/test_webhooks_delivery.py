"""Spec §11 deliveries, end to end: the app (its worker running in the lifespan) sends to a
real HTTP receiver on 127.0.0.1, and every delivery is checked with the ``standardwebhooks``
package, an implementation independent of paycode's. Retry delays and the rotation overlap are
compressed through ``Settings.extra``; everything else runs as in production."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.webhooks.worker import WebhookWorker, WorkerConfig
from models.db import Database
from tests.api import Api, User
from tests.conftest import ADMIN_TOKEN
from tests.server import ROOT
from tests.services import unavailable
from tests.webhook_receiver import Receiver, sleeping, statuses, until

FAST_SCHEDULE = (0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def make_client(database_url: str, **extra: Any) -> TestClient:
    settings = Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        public_url_setting="http://testserver",
        webhook_allow_private=True,
        extra={"webhook_retry_schedule": FAST_SCHEDULE, "webhook_interval": 0.05, **extra},
    )
    return TestClient(create_app(settings, migrate_schema=False))


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    with make_client(database_url) as client:
        yield Api(client, ADMIN_TOKEN)


def endpoint(api: Api, user: User, url: str, **body: Any) -> dict[str, Any]:
    response = api.post("/webhooks", user, json={"url": url, **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


def shop(api: Api) -> tuple[User, User, User, str]:
    """Payee, agent, a payer with money, and a static code of their agency."""
    payee, agent, payer = api.user(), api.user(), api.user(funds=100_000)
    agency = api.agency(payee, agent)
    code = api.code(agent, agency["id"], kind="static")
    return payee, agent, payer, code["token"]


def pay(api: Api, payer: User, code: str, amount: int = 1250) -> dict[str, Any]:
    response = api.post("/payments", payer, json={"code": code, "amount": amount})
    assert response.status_code == 201, response.text
    return dict(response.json())


def deliveries(api: Api, user: User, webhook_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/webhooks/{webhook_id}/deliveries", user)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def test_a_payment_reaches_the_payees_and_the_agents_endpoints_once_verified(
    api: Api, receiver: Receiver
) -> None:
    """payment.succeeded arrives once at the payee's and once at the agent's endpoint, each
    verified by standardwebhooks with that endpoint's secret, with the §11 body and headers."""
    payee, agent, payer, code = shop(api)
    mine = endpoint(api, payee, receiver.url("payee"), events=["payment.succeeded"])
    theirs = endpoint(api, agent, receiver.url("agent"), events=["payment.succeeded"])
    payment = pay(api, payer, code)
    until(lambda: len(receiver.of("payee")) == 1 and len(receiver.of("agent")) == 1, 10)
    time.sleep(0.5)  # anything sent twice would have arrived by now
    for name, hook in (("payee", mine), ("agent", theirs)):
        [call] = receiver.of(name)
        body = call.verify(hook["secret"])
        assert body["type"] == "payment.succeeded"
        assert body["data"]["id"] == payment["id"]
        assert body["data"]["amount"] == 1250
        assert isinstance(body["seq"], int) and body["seq"] >= 1
        assert body["timestamp"].endswith("Z")
        assert call.headers["content-type"] == "application/json"
        assert abs(int(call.headers["webhook-timestamp"]) - time.time()) < 30
        assert call.headers["webhook-signature"].startswith("v1,")
        assert not call.verifies(theirs["secret"] if name == "payee" else mine["secret"])
        [delivery] = deliveries(api, payee if name == "payee" else agent, hook["id"])
        assert delivery["id"] == call.webhook_id
        assert delivery["status"] == "succeeded" and delivery["attempts"] == 1


def test_with_no_endpoint_enabled_a_payment_costs_the_worker_no_database_unit(
    database_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No endpoint anywhere: the payments' nudges run no write pass (the looks, one per
    interval, find nothing to do); the first endpoint enabled gets the next payment."""
    writes: list[int] = []
    write = WebhookWorker._write

    def counted(self: WebhookWorker, *args: Any) -> Any:
        writes.append(1)
        return write(self, *args)

    monkeypatch.setattr(WebhookWorker, "_write", counted)
    with make_client(database_url, webhook_interval=0.2) as client:
        api = Api(client, ADMIN_TOKEN)
        payee, _agent, payer, code = shop(api)
        time.sleep(0.5)
        before = len(writes)
        for _ in range(10):
            pay(api, payer, code)
            time.sleep(0.03)
        time.sleep(0.3)
        assert len(writes) == before, "a payment with no endpoint anywhere ran a write pass"
        hook = endpoint(api, payee, receiver.url("payee"), events=["payment.succeeded"])
        paid = pay(api, payer, code)
        until(lambda: len(receiver.of("payee")) == 1, 10)
        assert receiver.of("payee")[0].verify(hook["secret"])["data"]["id"] == paid["id"]


def test_outcomes_landing_close_together_are_written_together(
    database_url: str, receiver: Receiver
) -> None:
    """An attempt's outcome waits, up to the record spacing, for those landing after it: the
    rows of three deliveries 0.1 s apart appear together, none before the spacing ran out."""
    with make_client(database_url, webhook_record_spacing=1.0) as client:
        api = Api(client, ADMIN_TOKEN)
        payee, _agent, payer, code = shop(api)
        hook = endpoint(api, payee, receiver.url("payee"), events=["payment.succeeded"])
        for _ in range(3):
            pay(api, payer, code)
            time.sleep(0.1)
        until(lambda: len(receiver.of("payee")) == 3, 10)
        assert deliveries(api, payee, hook["id"]) == []
        until(lambda: bool(deliveries(api, payee, hook["id"])), 5)
        written = deliveries(api, payee, hook["id"])
        assert len(written) == 3
        assert {d["status"] for d in written} == {"succeeded"}


def test_two_failures_then_success_are_three_attempts_under_one_webhook_id(
    api: Api, receiver: Receiver
) -> None:
    """The receiver answers 500, 500, then 200: three attempts, one webhook-id, each verified;
    the delivery ends succeeded with every attempt's outcome listed."""
    payee, _agent, payer, code = shop(api)
    hook = endpoint(api, payee, receiver.url("flaky"), events=["payment.succeeded"])
    receiver.behaviours["flaky"] = statuses(500, 500)
    pay(api, payer, code)
    until(lambda: len(receiver.of("flaky")) == 3, 15)
    calls = receiver.of("flaky")
    assert len({c.webhook_id for c in calls}) == 1
    assert all(c.verify(hook["secret"])["type"] == "payment.succeeded" for c in calls)
    until(lambda: deliveries(api, payee, hook["id"])[0]["status"] == "succeeded", 5)
    [delivery] = deliveries(api, payee, hook["id"])
    assert delivery["attempts"] == 3
    assert delivery["last_status_code"] == 200
    assert [a["outcome"] for a in delivery["attempt_log"]] == [
        "http_error",
        "http_error",
        "succeeded",
    ]
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 200]


def test_a_receiver_down_for_a_while_gets_everything_owed_when_it_is_back(
    database_url: str,
) -> None:
    """With the receiver down, payments go on and their deliveries wait; once it is up again
    every payment arrives, each verified, none missing."""
    port_holder = Receiver()
    with make_client(database_url) as client:
        api = Api(client, ADMIN_TOKEN)
        payee, _agent, payer, code = shop(api)
        hook = endpoint(api, payee, port_holder.url("down"), events=["payment.succeeded"])
        paid = [pay(api, payer, code, 100 + i)["id"] for i in range(5)]

        def all_retried() -> bool:
            found = deliveries(api, payee, hook["id"])
            return len(found) == 5 and all(d["attempts"] >= 2 for d in found)

        until(all_retried, 10)
        assert {d["status"] for d in deliveries(api, payee, hook["id"])} == {"pending"}
        outcomes = {
            a["outcome"] for d in deliveries(api, payee, hook["id"]) for a in d["attempt_log"]
        }
        assert outcomes <= {"connection_error", "in_flight"}, outcomes
        assert all(d["last_error"] for d in deliveries(api, payee, hook["id"]))
        receiver = Receiver(port_holder.port).start()
        try:
            until(lambda: len({c.webhook_id for c in receiver.of("down")}) == 5, 15)
            got = [c.verify(hook["secret"])["data"]["id"] for c in receiver.of("down")]
            assert sorted(set(got)) == sorted(paid)
        finally:
            receiver.stop()


def test_rotation_signs_with_both_secrets_for_the_overlap_then_only_the_new(
    database_url: str, receiver: Receiver
) -> None:
    """After rotate-secret, deliveries verify with the old and the new secret; once the
    overlap (compressed to 2 s) is over, only with the new one."""
    with make_client(database_url, webhook_rotation_overlap=timedelta(seconds=2)) as client:
        api = Api(client, ADMIN_TOKEN)
        me = api.user()
        hook = endpoint(api, me, receiver.url("rotating"))
        old = hook["secret"]
        response = api.post(f"/webhooks/{hook['id']}/rotate-secret", me)
        assert response.status_code == 200
        new = response.json()["secret"]
        assert new != old and new.startswith("whsec_")
        assert api.post(f"/webhooks/{hook['id']}/test", me).status_code == 202
        until(lambda: len(receiver.of("rotating")) == 1, 10)
        [during] = receiver.of("rotating")
        assert during.verifies(old) and during.verifies(new)
        assert len(during.headers["webhook-signature"].split(" ")) == 2
        time.sleep(2.1)
        assert api.post(f"/webhooks/{hook['id']}/test", me).status_code == 202
        until(lambda: len(receiver.of("rotating")) == 2, 10)
        after = receiver.of("rotating")[1]
        assert after.verifies(new) and not after.verifies(old)


def test_a_slow_endpoint_delays_neither_another_endpoint_nor_payments(
    api: Api, receiver: Receiver
) -> None:
    """One endpoint sleeps 10 s on every request; the other endpoint of the same events gets
    each payment within a second or two, and payments answer as fast as without webhooks."""
    payee, agent, payer, code = shop(api)
    receiver.behaviours["slow"] = sleeping(10)
    endpoint(api, payee, receiver.url("slow"), events=["payment.succeeded"])
    endpoint(api, agent, receiver.url("fast"), events=["payment.succeeded"])
    bound = WorkerConfig().per_endpoint
    owed = bound + 4
    for i in range(owed):
        started = time.monotonic()
        pay(api, payer, code, 200 + i)
        assert time.monotonic() - started < 2.0
    until(lambda: len(receiver.of("fast")) == owed, 5, "the fast endpoint got every payment")
    fast_arrivals = [c.at for c in receiver.of("fast")]
    slow_calls = receiver.of("slow")
    # More deliveries owed to it than its slots, all due: called meanwhile, but never more
    # than the per-endpoint bound at once.
    assert 1 <= len(slow_calls) <= bound
    assert max(fast_arrivals) < min(c.at for c in slow_calls) + 10


def test_a_test_event_and_a_manual_retry(api: Api, receiver: Receiver) -> None:
    """POST /test delivers webhook.test with seq null and data {}; POST …/retry makes one new
    attempt of a delivery that had succeeded, under the same webhook-id."""
    me = api.user()
    hook = endpoint(api, me, receiver.url("manual"))
    response = api.post(f"/webhooks/{hook['id']}/test", me)
    assert response.status_code == 202
    assert response.json()["type"] == "webhook.test"
    until(lambda: len(receiver.of("manual")) == 1, 10)
    body = receiver.of("manual")[0].verify(hook["secret"])
    assert body["type"] == "webhook.test" and body["seq"] is None and body["data"] == {}
    delivery_id = response.json()["id"]
    until(lambda: deliveries(api, me, hook["id"])[0]["status"] == "succeeded", 5)
    retried = api.post(f"/webhooks/{hook['id']}/deliveries/{delivery_id}/retry", me)
    assert retried.status_code == 202
    until(lambda: len(receiver.of("manual")) == 2, 10)
    assert {c.webhook_id for c in receiver.of("manual")} == {delivery_id}
    until(lambda: deliveries(api, me, hook["id"])[0]["attempts"] == 2, 5)


def test_redirects_are_not_followed_and_big_answers_are_cut(api: Api, receiver: Receiver) -> None:
    """A 302 answer is a failed attempt (outcome redirect, nothing sent to its Location)."""
    me = api.user()
    hook = endpoint(api, me, receiver.url("moved"))
    receiver.behaviours["moved"] = statuses(302)
    assert api.post(f"/webhooks/{hook['id']}/test", me).status_code == 202
    until(lambda: len(receiver.of("moved")) == 2, 10)
    until(lambda: deliveries(api, me, hook["id"])[0]["status"] == "succeeded", 5)
    [delivery] = deliveries(api, me, hook["id"])
    assert [a["outcome"] for a in delivery["attempt_log"]] == ["redirect", "succeeded"]
    assert delivery["attempt_log"][0]["status_code"] == 302


def test_an_endpoint_failing_for_the_whole_window_is_disabled_and_its_account_told(
    database_url: str, receiver: Receiver
) -> None:
    """Every attempt failing for the disable window (compressed from 3 days to 1 s) switches
    the endpoint off and writes webhook.disabled to the account's outbox; a healthy endpoint
    of the account receives that event."""
    with make_client(database_url, webhook_disable_after=timedelta(seconds=1)) as client:
        api = Api(client, ADMIN_TOKEN)
        me = api.user()
        receiver.behaviours["dead"] = statuses(then=503)
        dead = endpoint(api, me, receiver.url("dead"))
        watcher = endpoint(api, me, receiver.url("watcher"), events=["webhook.disabled"])
        api.post(f"/webhooks/{dead['id']}/test", me)
        until(lambda: api.get(f"/webhooks/{dead['id']}", me).json()["enabled"] is False, 15)
        events = api.get("/events", me).json()["data"]
        disabled = [e for e in events if e["type"] == "webhook.disabled"]
        assert len(disabled) == 1 and disabled[0]["data"]["id"] == dead["id"]
        assert "secret" not in disabled[0]["data"]
        until(lambda: len(receiver.of("watcher")) == 1, 10)
        body = receiver.of("watcher")[0].verify(watcher["secret"])
        assert body["type"] == "webhook.disabled" and body["data"]["id"] == dead["id"]


def test_metrics_count_attempts_and_deliveries_and_show_the_oldest_pending(
    api: Api, receiver: Receiver
) -> None:
    """/metrics has deliveries by outcome, attempts by outcome and the oldest pending age."""
    me = api.user()
    hook = endpoint(api, me, receiver.url("metered"))
    receiver.behaviours["metered"] = statuses(500)
    api.post(f"/webhooks/{hook['id']}/test", me)
    until(lambda: deliveries(api, me, hook["id"])[0]["status"] == "succeeded", 10)
    text = api.client.get("/metrics").text
    for sample in (
        'paycode_webhook_deliveries_total{outcome="succeeded"}',
        'paycode_webhook_attempts_total{outcome="http_error"}',
        'paycode_webhook_attempts_total{outcome="succeeded"}',
        "paycode_webhook_oldest_pending_seconds ",
        "paycode_webhook_attempt_duration_seconds_count ",
    ):
        assert sample in text, sample


def test_the_node_example_of_the_docs_verifies_a_real_delivery(
    api: Api, receiver: Receiver, tmp_path: Path
) -> None:
    """docs/examples/verify_webhook.mjs (standard library only) accepts a delivery exactly
    as paycode sent it, and refuses it under another webhook-id."""
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed")
    me = api.user()
    hook = endpoint(api, me, receiver.url("node"))
    api.post(f"/webhooks/{hook['id']}/test", me)
    until(lambda: len(receiver.of("node")) == 1, 10)
    [call] = receiver.of("node")
    body = tmp_path / "body.json"
    body.write_bytes(call.body)
    script = str(ROOT / "docs" / "examples" / "verify_webhook.mjs")
    headers = [call.headers[h] for h in ("webhook-timestamp", "webhook-signature")]
    good = subprocess.run(
        [node, script, hook["secret"], call.webhook_id, *headers, str(body)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert good.returncode == 0 and "verified webhook.test" in good.stdout, good.stderr
    forged = subprocess.run(
        [node, script, hook["secret"], "msg_other", *headers, str(body)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert forged.returncode != 0


def test_a_flight_is_deleted_once_the_last_of_its_attempts_is_recorded(
    api: Api, receiver: Receiver, database_url: str
) -> None:
    """Payments committed together go out as one flight; its attempts are answered at
    different times (some after several passes), and the flight goes only when every one of
    them has its delivery row: none is left behind, none deleted early."""
    payee, _agent, payer, code = shop(api)

    async def staggered(_call: Any, index: int) -> int:
        await asyncio.sleep(0.05 * (index % 5))
        return 200

    receiver.behaviours["staggered"] = staggered
    hook = endpoint(api, payee, receiver.url("staggered"), events=["payment.succeeded"])
    for amount in range(100, 112):
        pay(api, payer, code, amount)
    database = Database(database_url)
    try:

        def flights() -> int:
            with database.raw_read() as tx:
                row = tx.one("SELECT COUNT(*) FROM webhook_flight")
            assert row is not None
            return int(row[0])

        until(lambda: len(receiver.of("staggered")) == 12, 10, "every delivery arrived")
        until(
            lambda: (
                all(d["status"] == "succeeded" for d in deliveries(api, payee, hook["id"]))
                and len(deliveries(api, payee, hook["id"])) == 12
            ),
            10,
            "every delivery recorded",
        )
        until(lambda: flights() == 0, 5, "every flight deleted")
    finally:
        database.dispose()
