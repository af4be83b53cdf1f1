"""A shop floor made through the public API only: one payee (the shop), K agents (counters)
with an active agency each, and K funded payers. Every account logs in as many devices as
the run asks for."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

from loadtests.servers import ADMIN_TOKEN
from loadtests.wire import Connection, bearer

PASSWORD = "bench-password-123"
FUNDS = 10**11


class SetupError(RuntimeError):
    """The server refused a setup step; the message carries its answer."""


@dataclass
class Member:
    handle: str
    tokens: list[str] = field(default_factory=list)
    account_id: str = ""
    agency_id: str = ""


@dataclass
class Shop:
    payee: Member
    agents: list[Member]
    payers: list[Member]


async def _call(
    conn: Connection, method: str, path: str, body: Any, headers: dict[str, str]
) -> Any:
    for attempt in range(5):
        reply = await conn.request(method, f"/api/v1{path}", body, headers)
        # The server asks for a retry when a concurrent request won a race (409 conflict) or
        # the database is briefly unavailable (503); setup steps are safe to repeat.
        retry = reply.status == 503 or (reply.status == 409 and b'"conflict"' in reply.body)
        if not retry:
            break
        await asyncio.sleep(0.05 * 2**attempt)
    if reply.status not in (200, 201):
        raise SetupError(f"{method} {path} -> {reply.status} {reply.body[:300]!r}")
    return reply.json()


async def member(host: str, port: int, handle: str, devices: int, funds: int = 0) -> Member:
    conn = Connection(host, port)
    try:
        body = {"handle": handle, "display_name": handle.title(), "password": PASSWORD}
        await _call(conn, "POST", "/accounts", body, {})
        who = Member(handle)
        for n in range(devices):
            login = {"handle": handle, "password": PASSWORD, "device_name": f"device-{n}"}
            session = await _call(conn, "POST", "/sessions", login, {})
            who.tokens.append(session["token"])
            who.account_id = session["account"]["id"]
        if funds:
            deposit = {"handle": handle, "amount": funds}
            await _call(conn, "POST", "/admin/deposits", deposit, bearer(ADMIN_TOKEN))
        return who
    finally:
        conn.close()


async def build(host: str, port: int, counters: int, devices: int = 2, parallel: int = 8) -> Shop:
    """Sign-ups and logins hash passwords with Argon2, so they go a few at a time."""
    run = secrets.token_hex(3)
    gate = asyncio.Semaphore(parallel)

    async def gated(handle: str, n: int, funds: int = 0) -> Member:
        async with gate:
            return await member(host, port, handle, n, funds)

    payee = await gated(f"shop{run}", devices)
    agents = await asyncio.gather(*(gated(f"c{run}n{i}", devices) for i in range(counters)))
    payers = await asyncio.gather(*(gated(f"p{run}n{i}", 1, FUNDS) for i in range(counters)))
    conn = Connection(host, port)
    try:
        for agent in agents:
            agency = await _call(
                conn,
                "POST",
                "/agencies",
                {"agent": agent.handle, "label": f"Counter {agent.handle}"},
                bearer(payee.tokens[0]),
            )
            agent.agency_id = agency["id"]
    finally:
        conn.close()
    return Shop(payee, list(agents), list(payers))
