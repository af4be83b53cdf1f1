"""The production topology (`make cluster`): 3 app processes behind nginx on PostgreSQL and
Redis. Devices spread over the processes all get a payment's events; a rolling restart while
payments flow loses no payment and no event (spec §7, §8; issue: production)."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from app.cluster import Cluster
from tests.api import Api, User
from tests.cluster import cluster_available, postgres_and_redis
from tests.conftest import ADMIN_TOKEN
from tests.services import PostgresFactory, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def cluster(pg_factory: PostgresFactory, tmp_path: Path) -> Iterator[Cluster]:
    """3 `paycode serve` processes + nginx on a fresh PostgreSQL database and a private Redis."""
    missing = cluster_available()
    if missing:
        unavailable(missing)
    with postgres_and_redis(pg_factory) as (database_url, redis_server):
        topology = Cluster(
            3,
            database_url=database_url,
            broker_url=redis_server.url,
            env={"PAYCODE_ADMIN_TOKEN": ADMIN_TOKEN, "PAYCODE_LOG_LEVEL": "info"},
            run_dir=tmp_path / "cluster",
        )
        try:
            topology.start()
            yield topology
        finally:
            topology.stop()


def process_metric(url: str, name: str) -> float:
    """The sum of one metric's samples on ONE app process, scraped on its own port."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


@dataclass
class Device:
    """A logged-in device that keeps one WebSocket open through nginx, reconnecting with
    `after` = the last seq it saw whenever the server closes it."""

    user: User
    ws_url: str
    seqs: list[int] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    stop: bool = False

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    async def run(self) -> None:
        while not self.stop:
            try:
                async with connect(
                    self.ws_url, subprotocols=["paycode.v1.json"], open_timeout=5
                ) as ws:
                    await self._session(ws)
            except websockets.ConnectionClosed as exc:
                self.close_codes.append(exc.rcvd.code if exc.rcvd else None)
            except (OSError, websockets.InvalidHandshake, TimeoutError):
                self.close_codes.append(None)
            if not self.stop:
                await asyncio.sleep(0.05)

    async def _session(self, ws: ClientConnection) -> None:
        await ws.send(json.dumps({"type": "hello", "token": self.user.token, "after": self.last}))
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        self.connected.set()
        async for message in ws:
            frame = json.loads(message)
            if frame["type"] == "event":
                self.seqs.append(frame["seq"])
                self.events.append(frame["event"])
            if self.stop:
                return


async def until(predicate: Any, seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def last_seq(api: Api, user: User) -> int:
    """The account's newest event seq, from GET /events (the outbox itself)."""
    after = 0
    while True:
        page = api.get(f"/events?after={after}&limit=200", user).json()["data"]
        if not page:
            return after
        after = page[-1]["seq"]


def shop(api: Api) -> tuple[User, User, User, dict[str, Any]]:
    payee = api.user()
    agent = api.user()
    payer = api.user(funds=10_000_000)
    agency = api.agency(payee, agent, label="Counter 1")
    return payee, agent, payer, agency


def test_devices_spread_over_processes_all_get_the_payment(cluster: Cluster) -> None:
    """Nine devices (agent and payee) connected through nginx land on all three processes;
    one payment through a dynamic code reaches every one of them, with gapless seqs, and
    each process counts its sockets and pushes in /metrics."""
    with httpx.Client(base_url=cluster.url, timeout=10) as http:
        api = Api(http, ADMIN_TOKEN)
        payee, agent, payer, agency = shop(api)
        devices_users = [api.log_in(agent.handle, f"till-{i}") for i in range(6)]
        devices_users += [api.log_in(payee.handle, f"office-{i}") for i in range(3)]
        pushes_before = sum(
            process_metric(a.url, "paycode_push_latency_seconds_count") for a in cluster.apps
        )

        async def scenario() -> list[Device]:
            devices = [Device(u, cluster.ws_url) for u in devices_users]
            tasks = [asyncio.create_task(d.run()) for d in devices]
            try:
                await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 15)
                per_process = [
                    await asyncio.to_thread(process_metric, a.url, "paycode_websockets_open")
                    for a in cluster.apps
                ]
                assert sum(per_process) == len(devices), per_process
                assert all(count >= 1 for count in per_process), per_process

                code = api.post(
                    "/codes",
                    agent,
                    json={"agency_id": agency["id"], "kind": "dynamic", "amount": 1250},
                )
                assert code.status_code == 201, code.text
                paid = api.post(
                    "/payments",
                    payer,
                    json={"code": code.json()["short_code"]},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                assert paid.status_code == 201, paid.text
                payment_id = paid.json()["id"]
                final = {agent.handle: last_seq(api, agent), payee.handle: last_seq(api, payee)}

                def everyone_caught_up() -> bool:
                    return all(d.last == final[d.user.handle] for d in devices)

                await until(everyone_caught_up, 10, "every device to get the payment")
                for device in devices:
                    assert device.seqs == list(range(1, final[device.user.handle] + 1))
                    paid_events = [e for e in device.events if e["type"] == "payment.succeeded"]
                    assert [e["data"]["id"] for e in paid_events] == [payment_id]
                    assert any(e["type"] == "code.paid" for e in device.events)
                return devices
            finally:
                for device in devices:
                    device.stop = True
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        devices = asyncio.run(scenario())
        pushes_after = sum(
            process_metric(a.url, "paycode_push_latency_seconds_count") for a in cluster.apps
        )
        # Each device got payment.succeeded and code.paid live.
        assert pushes_after - pushes_before >= 2 * len(devices)


def test_rolling_restart_loses_no_payment_and_no_event(cluster: Cluster) -> None:
    """SIGTERM one process at a time (then start it again) while payments flow through nginx:
    every payment the payer was told succeeded exists exactly once, the payee's balance is
    their sum, sockets on the stopped process are closed with 1012 and reconnect elsewhere, and
    every device ends with the complete, gapless seq of its account."""
    with httpx.Client(base_url=cluster.url, timeout=10) as http:
        api = Api(http, ADMIN_TOKEN)
        payee, agent, payer, agency = shop(api)
        static = api.post("/codes", agent, json={"agency_id": agency["id"], "kind": "static"})
        assert static.status_code == 201, static.text
        code_token = static.json()["token"]
        devices_users = [api.log_in(agent.handle, f"till-{i}") for i in range(6)]
        devices_users += [api.log_in(payee.handle, f"office-{i}") for i in range(3)]

    async def pay_until(stop: asyncio.Event, paid: dict[str, int]) -> None:
        """Pay the static code again and again; a failed attempt (502, 503, reset) is retried
        with the same Idempotency-Key, so it ends as one payment or none."""
        async with httpx.AsyncClient(base_url=cluster.url, timeout=10) as client:
            amount = 100
            while not stop.is_set():
                key = uuid.uuid4().hex
                amount += 1
                for _attempt in range(100):
                    try:
                        response = await client.post(
                            "/api/v1/payments",
                            json={"code": code_token, "amount": amount},
                            headers={**payer.headers, "Idempotency-Key": key},
                        )
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
                        continue
                    if response.status_code in (502, 503, 504):
                        await asyncio.sleep(0.05)
                        continue
                    assert response.status_code == 201, response.text
                    paid[response.json()["id"]] = amount
                    break
                else:
                    raise AssertionError("a payment never went through")
                await asyncio.sleep(0.02)

    async def scenario() -> tuple[list[Device], dict[str, int]]:
        devices = [Device(u, cluster.ws_url) for u in devices_users]
        tasks = [asyncio.create_task(d.run()) for d in devices]
        stop_paying = asyncio.Event()
        paid: dict[str, int] = {}
        payer_task = asyncio.create_task(pay_until(stop_paying, paid))
        try:
            await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 15)
            await asyncio.sleep(0.5)
            for app in cluster.apps:
                count_before = len(paid)
                app.terminate()
                # uvicorn re-raises the SIGTERM it handled, once its shutdown is complete.
                assert await asyncio.to_thread(app.wait, 20) in (0, -signal.SIGTERM)
                assert "Application shutdown complete" in app.log_path.read_text()
                await asyncio.to_thread(app.start)
                await asyncio.to_thread(app.wait_ready, 30)
                await until(lambda n=count_before: len(paid) > n + 3, 15, "payments to flow")
            stop_paying.set()
            await payer_task

            with httpx.Client(base_url=cluster.url, timeout=10) as http:
                api = Api(http, ADMIN_TOKEN)
                final = {agent.handle: last_seq(api, agent), payee.handle: last_seq(api, payee)}
            await until(
                lambda: all(d.last >= final[d.user.handle] for d in devices),
                20,
                "every device to catch up after the restarts",
            )
            for device in devices:
                expected = list(range(1, final[device.user.handle] + 1))
                assert device.seqs == expected, f"{device.user.handle}: gaps or repeats"
            return devices, paid
        finally:
            stop_paying.set()
            payer_task.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(payer_task, *tasks, return_exceptions=True)

    devices, paid = asyncio.run(scenario())
    assert len(paid) >= 10

    with httpx.Client(base_url=cluster.url, timeout=10) as http:
        api = Api(http, ADMIN_TOKEN)
        me = api.get("/me", payee).json()
        assert me["balance"] == sum(paid.values())
        listed: set[str] = set()
        cursor = ""
        while True:
            page = api.get(f"/payments?role=payee&limit=200{cursor}", payee).json()
            listed.update(p["id"] for p in page["data"])
            if not page["next_cursor"]:
                break
            cursor = f"&cursor={page['next_cursor']}"
        assert listed == set(paid)

    for device in devices:
        ids = [e["data"]["id"] for e in device.events if e["type"] == "payment.succeeded"]
        assert sorted(ids) == sorted(paid), "a device missed or repeated a payment"
    assert any(1012 in d.close_codes for d in devices), "no socket saw a 1012 restart close"

    logs = cluster.logs()
    for user in (payee, agent, payer, *devices_users):
        assert user.token not in logs
    assert code_token not in logs
