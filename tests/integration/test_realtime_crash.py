"""C6 under the worst crash: the instance that committed a payment dies by SIGKILL before it
publishes anything. The payment stands (the database is the truth) and the devices connected
to the other instance still get it, through that instance's outbox relay."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.cluster import postgres_and_redis
from tests.conftest import ADMIN_TOKEN
from tests.integration.test_realtime_cluster import (
    Watcher,
    auth,
    login,
    person,
    static_code,
    until,
)
from tests.realtime_server import ServeProcess
from tests.services import PostgresFactory


@pytest.fixture
def doomed_pair(pg_factory: PostgresFactory) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    with postgres_and_redis(pg_factory) as (database_url, redis):
        survivor = ServeProcess(database_url, redis.url, ADMIN_TOKEN)
        doomed = ServeProcess(
            database_url, redis.url, ADMIN_TOKEN, {"PAYCODE_FAULT_KILL_AFTER_COMMIT": "1"}
        )
        try:
            survivor.start()
            doomed.start()
            yield survivor, doomed
        finally:
            doomed.kill()
            survivor.stop()


def test_a_payment_committed_by_an_instance_killed_before_publishing_still_arrives(
    doomed_pair: tuple[ServeProcess, ServeProcess],
) -> None:
    """The payer's request to the doomed instance gets no answer (it died right after commit);
    the agent's and payee's devices on the surviving instance receive payment.succeeded once,
    and the payment is in the payee's list."""
    survivor, doomed = doomed_pair

    async def main() -> None:
        async with (
            httpx.AsyncClient(base_url=survivor.url, timeout=30) as http,
            httpx.AsyncClient(base_url=doomed.url, timeout=30) as doomed_http,
        ):
            payee, agent, payer = await person(http), await person(http), await person(http, 5_000)
            code = await static_code(http, payee, agent)
            watchers = [await Watcher(survivor.url, who).ready() for who in (payee, agent)]
            payer_on_doomed = await login(http, payer.handle)
            with pytest.raises(httpx.TransportError):
                await doomed_http.post(
                    "/api/v1/payments", json={"code": code}, headers=auth(payer_on_doomed)
                )
            assert doomed.process is not None
            assert doomed.process.wait(timeout=10) == -9
            await until(lambda: all(len(w.events) == 1 for w in watchers), within=5)
            listed = await http.get("/api/v1/payments?role=payee", headers=auth(payee))
            assert [p["id"] for p in listed.json()["data"]] == [
                w.events[0].data["id"] for w in watchers[:1]
            ]
            for watcher in watchers:
                assert [e.type for e in watcher.events] == ["payment.succeeded"]
                await watcher.stop()

    asyncio.run(main())
