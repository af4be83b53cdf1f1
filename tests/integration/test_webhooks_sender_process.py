"""``paycode serve``'s own webhook sender (PAYCODE_WEBHOOK_WORKER=process, the default): a
``paycode webhooks`` child that delivers while the server's workers send nothing, shows its
metrics through the server's ``/metrics``, is started again when it dies, even mid-attempt,
and never outlives its server. Real processes on a SQLite file, a real receiver."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api import Api, User
from tests.conftest import ADMIN_TOKEN
from tests.realtime_server import ServeProcess
from tests.server import children, gone
from tests.services import SqliteFactory
from tests.webhook_receiver import Call, Receiver, until

pytestmark = pytest.mark.slow

ENV = {"PAYCODE_WEBHOOK_ALLOW_PRIVATE": "1"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def server(sqlite_factory: SqliteFactory) -> Iterator[ServeProcess]:
    serving = ServeProcess(sqlite_factory.create(), "memory://", ADMIN_TOKEN, ENV).start()
    yield serving
    serving.stop()


def sender_of(server: ServeProcess) -> int:
    assert server.process is not None
    until(lambda: len(children(server.process.pid)) == 1, 15, "one sender process")  # type: ignore[union-attr]
    [pid] = children(server.process.pid)
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"webhooks" in command
    return pid


def webhook_lines(http: httpx.Client) -> str:
    metrics = http.get("/metrics").text
    return "\n".join(line for line in metrics.splitlines() if "paycode_webhook_" in line)


def shop(api: Api, receiver: Receiver, name: str) -> tuple[User, User, str, dict[str, Any]]:
    payee, agent, payer = api.user(), api.user(), api.user(funds=1_000_000)
    agency = api.agency(payee, agent)
    code = api.code(agent, agency["id"], kind="static")["token"]
    body = {"url": receiver.url(name), "events": ["payment.succeeded"]}
    hook = api.post("/webhooks", payee, json=body)
    assert hook.status_code == 201, hook.text
    return payee, payer, code, dict(hook.json())


def test_serve_sends_webhooks_from_a_process_of_its_own(
    server: ServeProcess, receiver: Receiver
) -> None:
    """One child process, and it is the one that delivers: the server's /metrics counts the
    attempt, which only the child made."""
    sender_of(server)
    with server.client() as http:
        api = Api(http, ADMIN_TOKEN)
        _payee, payer, code, hook = shop(api, receiver, "shop")
        paid = api.post("/payments", payer, json={"code": code, "amount": 900})
        assert paid.status_code == 201, paid.text
        until(lambda: len(receiver.of("shop")) == 1, 10, "the delivery")
        [call] = receiver.of("shop")
        assert call.verify(hook["secret"])["data"]["id"] == paid.json()["id"]

        def attempts() -> float:
            metrics = http.get("/metrics").text
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith('paycode_webhook_attempts_total{outcome="succeeded"}')
            )

        until(lambda: attempts() == 1.0, 5, "the sender's attempt in the server's /metrics")
        metrics = http.get("/metrics").text
        # The server's own idle webhook families give way to the sender's: each appears once.
        assert metrics.count("# TYPE paycode_webhook_attempts_total counter") == 1


def test_the_server_tells_its_sender_of_each_commit(
    server: ServeProcess, receiver: Receiver
) -> None:
    """Deliveries leave on the commit, not at the sender's next look (every 0.25 s): most
    payments' deliveries arrive within 0.1 s of the payment's answer."""
    sender_of(server)
    with server.client() as http:
        api = Api(http, ADMIN_TOKEN)
        _payee, payer, code, _hook = shop(api, receiver, "quick")
        waits = []
        for n in range(8):
            paid = api.post("/payments", payer, json={"code": code, "amount": 100 + n})
            assert paid.status_code == 201, paid.text
            answered = time.time()
            until(lambda n=n: len(receiver.of("quick")) == n + 1, 10, "the delivery")  # type: ignore[misc]
            waits.append(receiver.of("quick")[n].at - answered)
            time.sleep(0.3)
        assert sorted(waits)[5] < 0.1, waits


def test_a_sender_killed_mid_attempt_is_started_again_and_delivers(
    server: ServeProcess, receiver: Receiver
) -> None:
    """The receiver holds the first attempt; the sender is killed with SIGKILL. The server
    starts another, which delivers the event with the same webhook-id once the dead one's
    lease has run out; the delivery's history shows the attempt cut short."""

    async def hold_first(_call: Call, index: int) -> int:
        if index == 0:
            await asyncio.sleep(60)
        return 200

    receiver.behaviours["held"] = hold_first
    first = sender_of(server)
    with server.client() as http:
        api = Api(http, ADMIN_TOKEN)
        payee, payer, code, hook = shop(api, receiver, "held")
        assert api.post("/payments", payer, json={"code": code, "amount": 700}).status_code == 201
        until(lambda: len(receiver.of("held")) == 1, 10, "the first attempt")
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        until(lambda: gone(first), 5, "the killed sender reaped")
        second = sender_of(server)
        assert second != first
        until(lambda: len(receiver.of("held")) == 2, 40, "the delivery made again")
        assert time.monotonic() - killed_at > 5, "not before the dead sender's lease ran out"
        held, delivered = receiver.of("held")
        assert held.webhook_id == delivered.webhook_id
        assert delivered.verifies(hook["secret"])

        def history() -> list[str]:
            found = api.get(f"/webhooks/{hook['id']}/deliveries", payee).json()["data"]
            return [entry["outcome"] for entry in found[0]["attempt_log"]] if found else []

        until(lambda: history() == ["interrupted", "succeeded"], 10, "the delivery's history")
        # The new sender's metrics, on the port it was started with, reach the server's.
        until(lambda: 'outcome="succeeded"' in webhook_lines(http), 10, "the new sender's metrics")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_sender_does_not_outlive_its_server(
    sqlite_factory: SqliteFactory, how: signal.Signals
) -> None:
    """Stopped in order (SIGTERM) the server stops its sender before it exits, and removes
    the sender's socket directory; killed (SIGKILL), it leaves a sender that notices its
    parent is gone and exits by itself, removing the directory its server made for it."""
    server = ServeProcess(sqlite_factory.create(), "memory://", ADMIN_TOKEN, ENV).start()
    assert server.process is not None
    try:
        sender = sender_of(server)
        command = Path(f"/proc/{sender}/cmdline").read_bytes().decode().split("\0")
        nudge_dir = Path(command[command.index("--nudge-socket") + 1]).parent
        assert nudge_dir.is_dir()
        server.process.send_signal(how)
        assert server.process.wait(timeout=20) == -how
        if how == signal.SIGTERM:
            assert gone(sender)
            assert not nudge_dir.exists()
        until(lambda: gone(sender), 10, "the sender gone with its server")
        assert not nudge_dir.exists()
    finally:
        server.stop()


def test_the_server_sends_itself_when_told_to(sqlite_factory: SqliteFactory) -> None:
    """PAYCODE_WEBHOOK_WORKER=on and off start no sender process."""
    for mode in ("on", "off"):
        env = {**ENV, "PAYCODE_WEBHOOK_WORKER": mode}
        server = ServeProcess(sqlite_factory.create(), "memory://", ADMIN_TOKEN, env).start()
        assert server.process is not None
        try:
            time.sleep(0.5)
            assert children(server.process.pid) == set()
        finally:
            server.stop()


def test_no_sender_metrics_is_no_webhook_families(server: ServeProcess) -> None:
    """While the sender cannot answer (it is being started again), the server's /metrics
    shows no webhook family rather than its own idle zeros."""
    sender = sender_of(server)
    os.kill(sender, signal.SIGSTOP)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            metrics = http.get("/metrics").text
        assert "paycode_webhook_" not in metrics
        assert "# TYPE paycode_http_requests_total counter" in metrics
    finally:
        os.kill(sender, signal.SIGCONT)
