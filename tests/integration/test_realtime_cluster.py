"""Live confirmations across real `paycode serve` processes sharing PostgreSQL and a Redis of
the test's own: cross-instance delivery both ways, revocation on another instance, a burst,
a Redis outage, and events committed by a process that never publishes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.cli import main as cli
from realtime.client import Event, LiveClient, Unauthorized
from tests.cluster import RedisServer, postgres_and_redis
from tests.conftest import ADMIN_TOKEN
from tests.realtime_server import ServeProcess
from tests.services import PostgresFactory

PASSWORD = "correct horse battery"


@dataclass
class Cluster:
    redis: RedisServer
    a: ServeProcess
    b: ServeProcess
    database_url: str


@pytest.fixture(scope="module")
def cluster(pg_factory: PostgresFactory) -> Iterator[Cluster]:
    with postgres_and_redis(pg_factory) as (database_url, redis):
        a = ServeProcess(database_url, redis.url, ADMIN_TOKEN)
        b = ServeProcess(database_url, redis.url, ADMIN_TOKEN)
        try:
            a.start()
            b.start()
            yield Cluster(redis, a, b, database_url)
        finally:
            a.stop()
            b.stop()


_handles = iter(range(1, 10_000))


@dataclass
class Person:
    handle: str
    token: str
    device_id: str


async def person(http: httpx.AsyncClient, funds: int = 0) -> Person:
    handle = f"rt{int(time.time() * 1000) % 10**8}x{next(_handles)}"
    body = {"handle": handle, "display_name": handle, "password": PASSWORD}
    assert (await http.post("/api/v1/accounts", json=body)).status_code == 201
    return await login(http, handle, funds)


async def login(http: httpx.AsyncClient, handle: str, funds: int = 0) -> Person:
    body = {"handle": handle, "password": PASSWORD, "device_name": "counter"}
    response = await http.post("/api/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    if funds:
        deposit = await http.post(
            "/api/v1/admin/deposits",
            json={"handle": handle, "amount": funds},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert deposit.status_code == 201, deposit.text
    data = response.json()
    return Person(handle, data["token"], data["device"]["id"])


def auth(who: Person) -> dict[str, str]:
    return {"Authorization": f"Bearer {who.token}"}


async def static_code(http: httpx.AsyncClient, payee: Person, agent: Person) -> str:
    agency = await http.post("/api/v1/agencies", json={"agent": agent.handle}, headers=auth(payee))
    assert agency.status_code == 201, agency.text
    code = await http.post(
        "/api/v1/codes",
        json={"agency_id": agency.json()["id"], "kind": "static", "amount": 100},
        headers=auth(agent),
    )
    assert code.status_code == 201, code.text
    return str(code.json()["token"])


async def pay(http: httpx.AsyncClient, payer: Person, code: str) -> dict[str, Any]:
    response = await http.post("/api/v1/payments", json={"code": code}, headers=auth(payer))
    assert response.status_code == 201, response.text
    return dict(response.json())


class Watcher:
    """A LiveClient draining into a list in the background."""

    def __init__(self, base_url: str, who: Person, after: int | None = None) -> None:
        self.client = LiveClient(base_url, who.token, after=after, backoff_cap=0.5)
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for event in self.client:
                self.events.append(event)
        except BaseException as exc:
            self.error = exc

    async def ready(self) -> Watcher:
        await until(lambda: self.client.welcome is not None or self.error is not None)
        return self

    async def stop(self) -> None:
        await self.client.close()
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task

    def seqs(self) -> list[int]:
        return [e.seq for e in self.events]


async def until(predicate: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def last_seq(http: httpx.AsyncClient, who: Person, after: int = 0) -> list[int]:
    seqs: list[int] = []
    while True:
        page = await http.get(f"/api/v1/events?after={after}&limit=200", headers=auth(who))
        assert page.status_code == 200, page.text
        batch = [e["seq"] for e in page.json()["data"]]
        seqs += batch
        if len(batch) < 200:
            return seqs
        after = batch[-1]


def test_payments_through_one_instance_reach_devices_on_the_other_both_ways(
    cluster: Cluster,
) -> None:
    """A payment made through A reaches the agent, payee and payer devices connected to B,
    and one made through B reaches those connected to A, once each and in order."""

    async def main() -> None:
        async with (
            httpx.AsyncClient(base_url=cluster.a.url, timeout=30) as http_a,
            httpx.AsyncClient(base_url=cluster.b.url, timeout=30) as http_b,
        ):
            payee, agent, payer = (
                await person(http_a),
                await person(http_a),
                await person(http_a, 10_000),
            )
            code = await static_code(http_a, payee, agent)
            agent_b = await login(http_b, agent.handle)
            on_b = [await Watcher(cluster.b.url, p).ready() for p in (payee, agent_b, payer)]
            on_a = [await Watcher(cluster.a.url, p).ready() for p in (payee, agent, payer)]
            first = await pay(http_a, payer, code)
            await until(lambda: all(len(w.events) == 1 for w in on_b + on_a))
            second = await pay(http_b, payer, code)
            await until(lambda: all(len(w.events) == 2 for w in on_b + on_a))
            for watcher in on_a + on_b:
                assert [e.type for e in watcher.events] == ["payment.succeeded"] * 2
                assert [e.data["id"] for e in watcher.events] == [first["id"], second["id"]]
                assert watcher.seqs() == sorted(set(watcher.seqs()))
            for watcher in on_a + on_b:
                await watcher.stop()

    asyncio.run(main())


def test_revoking_a_device_through_one_instance_closes_its_socket_on_the_other(
    cluster: Cluster,
) -> None:
    """DELETE /devices/{id} sent to A closes that device's socket on B with 4401 within a
    second; the account's other socket on B keeps receiving."""

    async def main() -> None:
        async with httpx.AsyncClient(base_url=cluster.a.url, timeout=30) as http_a:
            owner = await person(http_a)
            tablet = await login(http_a, owner.handle)
            doomed = await Watcher(cluster.b.url, tablet).ready()
            staying = await Watcher(cluster.b.url, owner).ready()
            revoked_at = time.monotonic()
            gone = await http_a.delete(f"/api/v1/devices/{tablet.device_id}", headers=auth(owner))
            assert gone.status_code == 204
            await until(lambda: doomed.error is not None, within=5)
            assert time.monotonic() - revoked_at < 1.0
            assert isinstance(doomed.error, Unauthorized)
            assert doomed.client.close_codes[-1] == 4401
            await login(http_a, owner.handle, funds=5)
            await until(lambda: len(staying.events) == 1)
            await staying.stop()
            await doomed.stop()

    asyncio.run(main())


def test_a_token_revoked_through_one_instance_is_refused_by_the_other(cluster: Cluster) -> None:
    """B has the tablet's token in its cache (it just served it); DELETE /devices/{id} sent to
    A makes B answer 401 to that token within a second, the bound its socket closes in; the
    account's other device is still served on B."""

    async def main() -> None:
        async with (
            httpx.AsyncClient(base_url=cluster.a.url, timeout=30) as http_a,
            httpx.AsyncClient(base_url=cluster.b.url, timeout=30) as http_b,
        ):
            owner = await person(http_a)
            tablet = await login(http_a, owner.handle)
            assert (await http_b.get("/api/v1/me", headers=auth(tablet))).status_code == 200
            revoked_at = time.monotonic()
            gone = await http_a.delete(f"/api/v1/devices/{tablet.device_id}", headers=auth(owner))
            assert gone.status_code == 204
            while (await http_b.get("/api/v1/me", headers=auth(tablet))).status_code != 401:
                assert time.monotonic() - revoked_at < 5, "B kept serving a revoked token"
                await asyncio.sleep(0.01)
            assert time.monotonic() - revoked_at < 1.0
            assert (await http_b.get("/api/v1/me", headers=auth(owner))).status_code == 200

    asyncio.run(main())


def test_a_socket_connected_during_a_burst_sees_every_event_once_in_order(
    cluster: Cluster,
) -> None:
    """200 payments through A, with sockets on B joining mid-burst (one replaying from 0,
    one live-only): each sees distinct, ordered seqs; the replaying one sees all 200."""

    async def main() -> None:
        async with httpx.AsyncClient(base_url=cluster.a.url, timeout=30) as http_a:
            payee, agent, payer = (
                await person(http_a),
                await person(http_a),
                await person(http_a, 100_000),
            )
            code = await static_code(http_a, payee, agent)
            watchers: list[Watcher] = []
            for i in range(200):
                await pay(http_a, payer, code)
                if i == 50:
                    watchers.append(await Watcher(cluster.b.url, payee, after=0).ready())
                    watchers.append(await Watcher(cluster.b.url, payee, after=None).ready())
            full, live = watchers
            truth = await last_seq(http_a, payee)
            await until(lambda: full.seqs()[-1:] == truth[-1:] and live.seqs()[-1:] == truth[-1:])
            assert full.seqs() == truth
            assert [e.type for e in full.events].count("payment.succeeded") == 200
            assert live.seqs() == truth[-len(live.events) :]
            assert len(live.events) >= 100
            for watcher in watchers:
                await watcher.stop()

    asyncio.run(main())


def test_redis_outage_loses_nothing_and_cli_commits_reach_sockets(cluster: Cluster) -> None:
    """Redis is stopped during a burst of payments through A (they keep committing: the
    database is the truth) and restarted; sockets on A and B end with every event, none
    twice. Deposits committed by the `paycode deposit` CLI, a process that never publishes,
    reach the sockets too (the outbox relay)."""

    async def main() -> None:
        async with httpx.AsyncClient(base_url=cluster.a.url, timeout=30) as http_a:
            payee, agent, payer = (
                await person(http_a),
                await person(http_a),
                await person(http_a, 100_000),
            )
            code = await static_code(http_a, payee, agent)
            watchers = [
                await Watcher(server.url, who, after=0).ready()
                for server in (cluster.a, cluster.b)
                for who in (payee, agent, payer)
            ]
            for _ in range(10):
                await pay(http_a, payer, code)
            cluster.redis.stop()
            for _ in range(20):
                await pay(http_a, payer, code)
            await asyncio.to_thread(cluster.redis.start)
            for _ in range(10):
                await pay(http_a, payer, code)
            for who in (payee, payer):
                argv = ["deposit", who.handle, "3", "--database-url", cluster.database_url]
                assert await asyncio.to_thread(cli, argv) == 0
            truths = {}
            for who in (payee, agent, payer):
                truths[who.handle] = await last_seq(http_a, who)
            for watcher, who in zip(watchers, [payee, agent, payer] * 2, strict=True):
                truth = truths[who.handle]
                await until(lambda w=watcher, t=truth: w.seqs() == t, within=10)
            for watcher in watchers:
                await watcher.stop()

    asyncio.run(main())
