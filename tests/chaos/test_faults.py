"""Faults with nothing lost (issue 8, item 5): under a steady load of payments (payer threads
retrying 502/503/504 and broken connections with the same Idempotency-Key) and devices
listening over WebSockets, an app process is SIGKILLed three times, Redis is down for 10 s,
PostgreSQL is restarted. After each: `paycode verify` passes, every 201 is exactly one
payment, no key is charged twice, and every device ends with its account's whole gapless seq.
Figures go to build/chaos/ and docs/RELIABILITY.md."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.chaos.conftest import Faulty
from tests.chaos.load import Devices, Payers, Shop, check_nothing_lost, report

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def under_load(faulty: Faulty, name: str, fault: Callable[[Payers], None]) -> dict[str, object]:
    """Open a shop, start devices and payers, run the fault, stop, check, report."""
    base = faulty.cluster.url
    shop = Shop.open(base)
    devices = Devices(base, shop).start()
    payers = Payers(base, shop).start()
    try:
        payers.wait_for_more(20)
        fault(payers)
        payers.wait_for_more(20)
    finally:
        payers.stop()
    figures = check_nothing_lost(base, faulty.database_url, shop, payers, devices)
    figures["seconds"] = round(time.monotonic() - faulty.started, 1)
    report(name, figures)
    return figures


@pytest.mark.chaos
def test_sigkill_of_an_app_process_three_times_loses_nothing(faulty: Faulty) -> None:
    """Each of the three app processes in turn is SIGKILLed mid-load and started again: the
    requests it held fail (502 or a dropped connection) and their retries under the same key
    succeed once; its sockets reconnect elsewhere and replay what they missed."""

    def kill_three_times(payers: Payers) -> None:
        for app in faulty.cluster.apps:
            app.kill()
            app.wait(10)
            payers.wait_for_more(10)
            app.start()
            app.wait_ready(30)
            payers.wait_for_more(10)

    under_load(faulty, "sigkill", kill_three_times)


@pytest.mark.chaos
def test_redis_down_for_10_s_loses_nothing(faulty: Faulty) -> None:
    """Redis stops for 10 s and comes back on the same port: payments keep committing (the
    broker is not on the payment path), the outbox relay delivers across processes meanwhile,
    and the sockets resync once the broker is back."""

    def redis_outage(payers: Payers) -> None:
        faulty.redis.stop()
        time.sleep(10)
        faulty.redis.start()

    figures = under_load(faulty, "redis", redis_outage)
    assert figures["payments_accepted"] >= 40


# Under a minute, so `make test` runs it too; `make chaos` runs all three.
def test_postgresql_restart_fails_in_flight_payments_cleanly(faulty: Faulty) -> None:
    """The private PostgreSQL is stopped (fast: sessions terminated), left down for 3 s and
    started: payments in flight or arriving meanwhile get 503 (or a 502/dropped connection),
    never a 500; their retries under the same key succeed exactly once."""

    def restart_postgres(payers: Payers) -> None:
        faulty.postgres.restart(down_for=3)

    figures = under_load(faulty, "postgres", restart_postgres)
    assert figures["retried_keys"], "no payment noticed the restart"
    assert figures["status_503"], "no 503 while the database was down"
