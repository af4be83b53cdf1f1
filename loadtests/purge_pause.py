"""Does the purge pause the payments? Payments at a fixed rate, their latency measured while a
serving process's own background pass removes a large backlog of expired Idempotency-Key
records, against the same rate with the purge off, in one run, on SQLite and on PostgreSQL.

The backlog (records a day old) cannot be made through the API without waiting a day, so it
is written straight into the database with the driver; everything measured goes over HTTP.

    python -m loadtests.purge_pause [--rows 200000] [--rate 100] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from loadtests import shop
from loadtests.servers import Server, pg_available, pg_database, start_paycode
from loadtests.stats import summarize
from loadtests.wire import Connection, bearer


def seed_backlog(database_url: str, account_id: str, rows: int) -> None:
    moment = datetime.now(UTC) - timedelta(hours=25)
    values = [(account_id, "payments", f"old-{i}", "h", 201, None) for i in range(rows)]
    insert = (
        'INSERT INTO idempotency_record (account_id, scope, "key", request_hash, status_code,'
        " response, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            # The text form SQLAlchemy stores for an aware UTC time on SQLite.
            stamp = moment.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
            conn.executemany(insert, [(*row, stamp) for row in values])
        return
    import psycopg

    with psycopg.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.executemany(insert.replace("?", "%s"), [(*row, moment) for row in values])


async def pay_at_rate(
    host: str, port: int, payer: str, payee: str, rate: float, seconds: float
) -> list[float]:
    """Payments started on a fixed schedule (not back to back), on 16 connections; each
    latency is from its scheduled start, so a pause shows up in every payment it delays."""
    connections = [Connection(host, port) for _ in range(16)]
    latencies: list[float] = []
    start = time.perf_counter()
    count = int(rate * seconds)

    async def one(n: int) -> None:
        scheduled = start + n / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        headers = {**bearer(payer), "Idempotency-Key": secrets.token_hex(12)}
        reply = await connections[n % 16].request(
            "POST", "/api/v1/payments", {"payee": payee, "amount": 1}, headers
        )
        if reply.status == 201:
            latencies.append(time.perf_counter() - scheduled)

    # Each connection carries one request at a time.
    locks = [asyncio.Lock() for _ in connections]

    async def locked(n: int) -> None:
        async with locks[n % 16]:
            await one(n)

    await asyncio.gather(*(locked(n) for n in range(count)))
    for connection in connections:
        connection.close()
    return latencies


def purged_rows(host: str, port: int) -> float:
    text = urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    found = re.search(r'^paycode_purged_rows_total\{table="idempotency_record"\} (\S+)', text, re.M)
    return float(found.group(1)) if found else 0.0


def serve(database_url: str, logs: Path, purge_interval: float) -> Server:
    os.environ["PAYCODE_PURGE_INTERVAL"] = str(purge_interval)
    try:
        return start_paycode(database_url, "memory://", 1, logs)
    finally:
        del os.environ["PAYCODE_PURGE_INTERVAL"]


def measure(
    database_url: str, rows: int, rate: float, seconds: float, logs: Path
) -> dict[str, Any]:
    """The same payments at the same rate, first on a server whose purge is off, then on one
    whose own background pass removes the backlog while they run."""
    server = serve(database_url, logs, 0)
    try:
        floor = asyncio.run(shop.build(server.host, server.port, counters=1, devices=1))
        payer, payee = floor.payers[0].tokens[0], floor.payee.handle
        seed_backlog(database_url, floor.payers[0].account_id, rows)
        quiet = asyncio.run(pay_at_rate(server.host, server.port, payer, payee, rate, seconds))
    finally:
        server.stop()
    # The first pass starts 10-50 % of the interval after start: within the payments.
    server = serve(database_url, logs, seconds)
    try:
        during = asyncio.run(pay_at_rate(server.host, server.port, payer, payee, rate, seconds))
        deadline = time.monotonic() + 120
        while purged_rows(server.host, server.port) < rows and time.monotonic() < deadline:
            time.sleep(0.2)
        removed = purged_rows(server.host, server.port)
    finally:
        server.stop()
    return {
        "backlog_rows": rows,
        "removed_by_the_serving_process": int(removed),
        "without_purge": summarize(quiet, seconds),
        "during_the_background_purge": summarize(during, seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        logs = Path(scratch)
        results["sqlite"] = measure(
            f"sqlite:///{scratch}/purge.db", args.rows, args.rate, args.seconds, logs
        )
        if pg_available():
            with pg_database() as url:
                results["postgresql"] = measure(url, args.rows, args.rate, args.seconds, logs)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
