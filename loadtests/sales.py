"""Sales at the counters of one shop: each sale issues a dynamic code with items (the clerk),
pays it (the customer), and waits until the confirmation frame reached every device of the
agent and of the payee. Closed loop for saturation, open loop (Poisson) for latency."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter as Tally
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loadtests.devices import Arrivals, Device
from loadtests.shop import Member, Shop
from loadtests.stats import summarize
from loadtests.wire import Connection, WireError, bearer

ITEMS = [
    {"name": "flat white", "quantity": 2, "unit_amount": 450},
    {"name": "almond croissant", "quantity": 1, "unit_amount": 350},
]
CONFIRM_TIMEOUT = 10.0


def epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@dataclass
class Till:
    """One checkout counter and the customer standing at it, each with its own connection."""

    agent: Member
    payer: Member
    agent_conn: Connection
    payer_conn: Connection


@dataclass
class Tape:
    """What one phase recorded."""

    confirm_all: list[float] = field(default_factory=list)  # commit -> last device, per payment
    confirm_each: list[float] = field(default_factory=list)  # commit -> each device's frame
    code_http: list[float] = field(default_factory=list)
    pay_http: list[float] = field(default_factory=list)
    errors: Tally[str] = field(default_factory=Tally)
    missing: int = 0
    late_starts: int = 0

    def report(self, seconds: float) -> dict[str, Any]:
        return {
            "completed": len(self.confirm_all),
            "payments_per_s": round(len(self.confirm_all) / seconds, 1) if seconds else 0.0,
            "confirmation_every_device": summarize(self.confirm_all, seconds),
            "confirmation_per_frame": summarize(self.confirm_each, seconds),
            "code_http": summarize(self.code_http, seconds),
            "payment_http": summarize(self.pay_http, seconds),
            "errors": dict(self.errors),
            "missing_confirmations": self.missing,
            "late_starts": self.late_starts,
        }


class Floor:
    def __init__(self, host: str, port: int, shop: Shop) -> None:
        self.shop = shop
        self.arrivals = Arrivals()
        url = f"ws://{host}:{port}/api/v1/ws"
        self.devices = [
            Device(url, token, who.handle, self.arrivals.on_event)
            for who in [shop.payee, *shop.agents]
            for token in who.tokens
        ]
        self.tills = [
            Till(agent, payer, Connection(host, port), Connection(host, port))
            for agent, payer in zip(shop.agents, shop.payers, strict=True)
        ]
        # The payee's devices see every payment, an agent's devices only its own.
        self.per_payment = len(shop.payee.tokens) + len(shop.agents[0].tokens)

    async def open(self, limit: float = 60) -> None:
        for device in self.devices:
            device.start()
        await asyncio.wait_for(asyncio.gather(*(d.ready.wait() for d in self.devices)), limit)

    async def close(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.devices))
        for till in self.tills:
            till.agent_conn.close()
            till.payer_conn.close()

    def seq_faults(self) -> dict[str, int]:
        return {
            "gaps": sum(d.gaps for d in self.devices),
            "duplicates": sum(d.duplicates for d in self.devices),
            "reconnects": sum(max(0, d.welcomes - 1) for d in self.devices),
        }

    async def sale(self, till: Till, tape: Tape) -> bool:
        try:
            return await self._sale(till, tape)
        except (WireError, OSError, TimeoutError) as exc:
            tape.errors[type(exc).__name__] += 1
            return False

    async def _sale(self, till: Till, tape: Tape) -> bool:
        start = time.perf_counter()
        body = {"agency_id": till.agent.agency_id, "kind": "dynamic", "items": ITEMS}
        reply = await till.agent_conn.request(
            "POST", "/api/v1/codes", body, bearer(till.agent.tokens[0])
        )
        issued = time.perf_counter()
        if reply.status != 201:
            tape.errors[f"code {reply.status}"] += 1
            return False
        tape.code_http.append(issued - start)
        headers = {**bearer(till.payer.tokens[0]), "Idempotency-Key": uuid.uuid4().hex}
        reply = await till.payer_conn.request(
            "POST", "/api/v1/payments", {"code": reply.json()["token"]}, headers
        )
        tape.pay_http.append(time.perf_counter() - issued)
        if reply.status != 201:
            tape.errors[f"payment {reply.status}"] += 1
            return False
        payment = reply.json()
        waiting = self.arrivals.expect(payment["id"], self.per_payment)
        try:
            times = await asyncio.wait_for(waiting, CONFIRM_TIMEOUT)
        except TimeoutError:
            self.arrivals.forget(payment["id"])
            tape.missing += 1
            return False
        committed = epoch(payment["created_at"])
        tape.confirm_all.append(max(times) - committed)
        tape.confirm_each.extend(t - committed for t in times)
        return True


async def saturate(floor: Floor, seconds: float) -> dict[str, Any]:
    """Every till sells back to back, as fast as the server lets it."""
    tape = Tape()
    deadline = time.perf_counter() + seconds

    async def till_loop(till: Till) -> None:
        while time.perf_counter() < deadline:
            if not await floor.sale(till, tape):
                await asyncio.sleep(0.05)

    began = time.perf_counter()
    await asyncio.gather(*(till_loop(t) for t in floor.tills))
    return tape.report(time.perf_counter() - began)


async def offered(floor: Floor, rate: float, seconds: float) -> dict[str, Any]:
    """Sales start as a Poisson process of ``rate``/s at the first free till; a sale that
    finds no till free waits for one and counts as a late start."""
    tape = Tape()
    free: asyncio.Queue[Till] = asyncio.Queue()
    for till in floor.tills:
        free.put_nowait(till)
    running: set[asyncio.Task[None]] = set()

    async def one(till: Till) -> None:
        try:
            await floor.sale(till, tape)
        finally:
            free.put_nowait(till)

    began = time.perf_counter()
    next_at = began
    while next_at < began + seconds:
        next_at += random.expovariate(rate)
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if free.empty():
            tape.late_starts += 1
        till = await free.get()
        task = asyncio.create_task(one(till))
        running.add(task)
        task.add_done_callback(running.discard)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*running), CONFIRM_TIMEOUT + 5)
    result = tape.report(time.perf_counter() - began)
    result["offered_rate"] = round(rate, 1)
    return result
