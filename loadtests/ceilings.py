"""What this machine allows without paycode: one payment-shaped transaction in raw stdlib
sqlite3 and in raw asyncpg, with the same shape as a paycode payment (one payee row shared by
every payment, payer/payee/agent rows locked, two balance updates, the payment, two ledger
legs, three outbox events with per-account seq); a bare JSON POST; and a bare sale (the
framework and wire work of one sale with no product logic, ``loadtests/bare_shop.py``)."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from loadtests.stats import summarize

PAYERS = 256
AGENTS = 32
EVENT_DATA = json.dumps(
    {
        "id": "p" * 22,
        "status": "succeeded",
        "amount": 1250,
        "items": [{"name": "coffee", "quantity": 1, "unit_amount": 1250}],
        "payer": {"handle": "payer0001", "display_name": "Payer"},
        "payee": {"handle": "shop", "display_name": "Shop"},
        "agent": {"handle": "counter01", "display_name": "Counter"},
        "receipt": {"payload": "x" * 300, "signature": "y" * 86, "key_id": "k1"},
    }
)

SCHEMA = [
    "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL CHECK (balance >= 0),"
    " last_seq BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE payments (id TEXT PRIMARY KEY, payer TEXT NOT NULL, payee TEXT NOT NULL,"
    " agent TEXT, amount BIGINT NOT NULL, created_at TEXT NOT NULL)",
    "CREATE TABLE legs (id TEXT PRIMARY KEY, payment TEXT NOT NULL, account TEXT NOT NULL,"
    " amount BIGINT NOT NULL)",
    "CREATE TABLE events (account TEXT NOT NULL, seq BIGINT NOT NULL, type TEXT NOT NULL,"
    " data TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (account, seq))",
]


def _ids() -> tuple[list[str], str, list[str]]:
    payers = [f"payer{i:04d}" for i in range(PAYERS)]
    agents = [f"agent{i:03d}" for i in range(AGENTS)]
    return payers, "payee", agents


def sqlite_ceiling(seconds: float) -> dict[str, Any]:
    """One thread, WAL, synchronous=NORMAL, BEGIN IMMEDIATE: the embedded default's ceiling."""
    payers, payee, agents = _ids()
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "ceiling.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA:
            conn.execute(statement)
        rows = [(a, 10**12) for a in [*payers, payee, *agents]]
        conn.executemany("INSERT INTO accounts (id, balance) VALUES (?, ?)", rows)
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds
        while (start := time.perf_counter()) < deadline:
            payer, agent = random.choice(payers), random.choice(agents)
            pid, now = uuid.uuid4().hex, time.strftime("%Y-%m-%dT%H:%M:%SZ")
            conn.execute("BEGIN IMMEDIATE")
            ordered = sorted([payer, payee, agent])
            conn.execute("SELECT id, balance FROM accounts WHERE id IN (?, ?, ?)", ordered)
            conn.execute("UPDATE accounts SET balance = balance - 1250 WHERE id = ?", (payer,))
            conn.execute("UPDATE accounts SET balance = balance + 1250 WHERE id = ?", (payee,))
            conn.execute(
                "INSERT INTO payments VALUES (?, ?, ?, ?, 1250, ?)", (pid, payer, payee, agent, now)
            )
            conn.execute("INSERT INTO legs VALUES (?, ?, ?, -1250)", (pid + "a", pid, payer))
            conn.execute("INSERT INTO legs VALUES (?, ?, ?, 1250)", (pid + "b", pid, payee))
            for account in (payer, payee, agent):
                (seq,) = conn.execute(
                    "UPDATE accounts SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq",
                    (account,),
                ).fetchone()
                conn.execute(
                    "INSERT INTO events VALUES (?, ?, 'payment.succeeded', ?, ?)",
                    (account, seq, EVENT_DATA, now),
                )
            conn.execute("COMMIT")
            latencies.append(time.perf_counter() - start)
        conn.close()
    return {"name": "sqlite3 payment tx (1 thread)", **summarize(latencies, seconds)}


async def asyncpg_ceiling(
    url: str, seconds: float, pool: int = 8, tasks: int = 32
) -> dict[str, Any]:
    """Raw asyncpg, pool 8, 32 concurrent tasks, rows locked in ascending id order."""
    import asyncpg

    payers, payee, agents = _ids()
    setup = await asyncpg.connect(url)
    try:
        for statement in SCHEMA:
            await setup.execute(statement)
        rows = [(a, 10**12) for a in [*payers, payee, *agents]]
        await setup.executemany("INSERT INTO accounts (id, balance) VALUES ($1, $2)", rows)
    finally:
        await setup.close()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    async with asyncpg.create_pool(url, min_size=pool, max_size=pool) as conns:

        async def one() -> None:
            payer, agent = random.choice(payers), random.choice(agents)
            pid, now = uuid.uuid4().hex, time.strftime("%Y-%m-%dT%H:%M:%SZ")
            async with conns.acquire() as conn, conn.transaction():
                ordered = sorted({payer, payee, agent})
                await conn.fetch(
                    "SELECT id, balance FROM accounts WHERE id = ANY($1::text[])"
                    " ORDER BY id FOR UPDATE",
                    ordered,
                )
                await conn.execute(
                    "UPDATE accounts SET balance = balance - 1250 WHERE id = $1", payer
                )
                await conn.execute(
                    "UPDATE accounts SET balance = balance + 1250 WHERE id = $1", payee
                )
                await conn.execute(
                    "INSERT INTO payments VALUES ($1, $2, $3, $4, 1250, $5)",
                    pid,
                    payer,
                    payee,
                    agent,
                    now,
                )
                await conn.execute(
                    "INSERT INTO legs VALUES ($1, $2, $3, -1250)", pid + "a", pid, payer
                )
                await conn.execute(
                    "INSERT INTO legs VALUES ($1, $2, $3, 1250)", pid + "b", pid, payee
                )
                for account in (payer, payee, agent):
                    seq = await conn.fetchval(
                        "UPDATE accounts SET last_seq = last_seq + 1 WHERE id = $1"
                        " RETURNING last_seq",
                        account,
                    )
                    await conn.execute(
                        "INSERT INTO events VALUES ($1, $2, 'payment.succeeded', $3, $4)",
                        account,
                        seq,
                        EVENT_DATA,
                        now,
                    )

        async def worker() -> None:
            while (start := time.perf_counter()) < deadline:
                await one()
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(tasks)))
    return {
        "name": f"asyncpg payment tx (pool {pool}, {tasks} tasks)",
        **summarize(latencies, seconds),
    }


async def http_ceiling(
    host: str, port: int, seconds: float, connections: int = 64
) -> dict[str, Any]:
    """Closed loop of small JSON POSTs to the bare app, with the client the payments use."""
    from loadtests.wire import Connection

    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    body = {"amount": 1250, "memo": "ceiling"}

    async def loop() -> None:
        conn = Connection(host, port)
        try:
            while (start := time.perf_counter()) < deadline:
                reply = await conn.request("POST", "/echo", body)
                if reply.status == 201:
                    latencies.append(time.perf_counter() - start)
        finally:
            conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    return {
        "name": f"bare Starlette JSON POST ({connections} connections)",
        **summarize(latencies, elapsed),
    }


def sale_ceiling(
    saturation: dict[str, Any], counters: int, seq_faults: dict[str, int]
) -> dict[str, Any]:
    """The bare sale as a rated ceiling: its rate is sales/s and its percentiles are commit →
    every device, as for paycode's saturation; the whole saturation record stays beside them."""
    return {
        "name": f"bare Starlette sale, no product logic ({counters} counters)",
        **saturation["confirmation_every_device"],
        "server_cpu_ms_per_sale": saturation.get("server_cpu_ms_per_payment"),
        "saturation": saturation,
        "seq_faults": seq_faults,
    }
