"""Many idle WebSockets on one server process: memory per connection, one event fanned out
to all of them, then a reconnect storm — every socket cut at once while events keep being
committed, every client back with jittered backoff and ``after``, all replayed gaplessly."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from loadtests.devices import Device
from loadtests.servers import ADMIN_TOKEN, Server
from loadtests.shop import Member, member
from loadtests.wire import Connection, bearer


async def _until(check: Any, limit: float, step: float = 0.2) -> float:
    """Seconds until ``check()`` holds; raises TimeoutError past ``limit``."""
    began = time.perf_counter()
    while not check():
        if time.perf_counter() - began > limit:
            raise TimeoutError
        await asyncio.sleep(step)
    return time.perf_counter() - began


async def _deposit_each(conn: Connection, accounts: list[Member], amount: int) -> None:
    for who in accounts:
        reply = await conn.request(
            "POST",
            "/api/v1/admin/deposits",
            {"handle": who.handle, "amount": amount},
            bearer(ADMIN_TOKEN),
        )
        if reply.status != 201:
            raise RuntimeError(f"deposit -> {reply.status} {reply.body[:200]!r}")


async def _open_all(devices: list[Device]) -> float:
    began = time.perf_counter()
    opening = asyncio.Semaphore(200)

    async def open_one(device: Device) -> None:
        async with opening:
            device.start()
            await device.ready.wait()

    await asyncio.wait_for(asyncio.gather(*(open_one(d) for d in devices)), 600)
    return time.perf_counter() - began


async def bare_sockets(server: Server, sockets: int) -> dict[str, Any]:
    """The floor: memory per idle socket of a bare Starlette WebSocket endpoint under the
    same uvicorn settings."""
    url = f"ws://{server.host}:{server.port}/ws"
    warm = [Device(url, "-", "-") for _ in range(20)]
    await _open_all(warm)
    await asyncio.gather(*(d.stop() for d in warm))
    await asyncio.sleep(1)
    rss_before = server.rss()
    devices = [Device(url, "-", "-") for _ in range(sockets)]
    try:
        seconds = await _open_all(devices)
        await asyncio.sleep(2)
        rss_after = server.rss()
    finally:
        await asyncio.gather(*(d.stop() for d in devices))
    return {
        "name": f"bare Starlette WebSocket, {sockets} idle",
        "sockets": sockets,
        "connect_seconds": round(seconds, 2),
        "kib_per_socket": round((rss_after - rss_before) / sockets / 1024, 1),
    }


# The server allows at most 16 sockets per device and 64 per account in one process (close
# 4429), so 10,000 sockets need at least 157 accounts with 4 logged-in devices each.
SOCKETS_PER_DEVICE = 16
DEVICES_PER_ACCOUNT = 4


async def idle_sockets(server: Server, sockets: int) -> dict[str, Any]:
    host, port = server.host, server.port
    gate = asyncio.Semaphore(8)
    per_account = SOCKETS_PER_DEVICE * DEVICES_PER_ACCOUNT
    accounts = math.ceil(sockets / per_account)

    async def make(i: int, devices: int) -> Member:
        async with gate:
            return await member(host, port, f"idle{port}n{i}", devices)

    people = await asyncio.gather(*(make(i, DEVICES_PER_ACCOUNT) for i in range(accounts)))
    url = f"ws://{host}:{port}/api/v1/ws"
    # Warm the server's WebSocket path first so its one-off allocations do not count.
    spare = await make(accounts, 2)
    warm = [Device(url, spare.tokens[n % 2], spare.handle) for n in range(20)]
    await _open_all(warm)
    await asyncio.gather(*(d.stop() for d in warm))
    await asyncio.sleep(1)
    rss_before = server.rss()

    devices = []
    for n in range(sockets):
        who = people[n // per_account]
        token = who.tokens[(n % per_account) // SOCKETS_PER_DEVICE]
        devices.append(Device(url, token, who.handle))
    connect_seconds = await _open_all(devices)
    await asyncio.sleep(2)
    rss_after = server.rss()
    result: dict[str, Any] = {
        "sockets": sockets,
        "accounts": accounts,
        "connect_seconds": round(connect_seconds, 2),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "kib_per_socket": round((rss_after - rss_before) / sockets / 1024, 1),
    }

    conn = Connection(host, port)
    try:
        target = {d.account: (d.last_seq or 0) + 1 for d in devices}
        began = time.perf_counter()
        await _deposit_each(conn, people, 100)
        await _until(lambda: all(d.last_seq == target[d.account] for d in devices), 60)
        # From the first deposit's request to the last socket's frame: one event per account.
        result["fanout_seconds"] = round(time.perf_counter() - began, 3)

        # The storm: every socket cut at once; events committed while they are away.
        for device in devices:
            device.drop()
        began = time.perf_counter()
        await _deposit_each(conn, people, 100)
        await _deposit_each(conn, people, 100)
        target = {h: s + 2 for h, s in target.items()}
        try:
            await _until(lambda: all(d.last_seq == target[d.account] for d in devices), 300)
            result["storm_seconds"] = round(time.perf_counter() - began, 2)
        except TimeoutError:
            result["storm_seconds"] = None
        result["storm_caught_up"] = sum(d.last_seq == target[d.account] for d in devices)
        result["storm_reconnected"] = sum(d.welcomes >= 2 for d in devices)
        result["storm_failed_attempts"] = sum(d.failed_attempts for d in devices)
        result["gaps"] = sum(d.gaps for d in devices)
        result["duplicates"] = sum(d.duplicates for d in devices)
        result["rss_after_storm_mib"] = round(server.rss() / 2**20, 1)
        errors = [e for d in devices for e in d.errors]
        result["sample_errors"] = sorted(set(errors))[:5]
    finally:
        conn.close()
        await asyncio.gather(*(d.stop() for d in devices))
    return result
