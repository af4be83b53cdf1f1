"""A shop floor of many shops: N payees, each with one agent whose counter holds a static
code, and N payers; every account logged in on D devices, each with its socket open. Payments
by static code (``POST /api/v1/payments {code, amount}`` with an ``Idempotency-Key``) go from a
random payer to a random shop at a fixed offered rate (Poisson), open loop. Latency is from
writing the POST to the ``payment.succeeded`` frame on the last of the payer's, payee's and
agent's devices. A 503 is a refusal, counted with whether it carried ``Retry-After``."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
import uuid
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Any

from loadtests.devices import Arrivals, Device
from loadtests.shop import FUNDS, Member, _call, member
from loadtests.stats import summarize
from loadtests.wire import Connection, WireError, bearer

CONFIRM_TIMEOUT = 10.0
AMOUNT = 1250
# A payer's pause after an answer that was neither a payment nor a 503 with Retry-After.
AFTER_ERROR = 0.01


@dataclass
class Counter:
    payee: Member
    agent: Member
    code: str


@dataclass
class Mall:
    counters: list[Counter]
    payers: list[Member]


async def build(host: str, port: int, shops: int, devices: int = 3, parallel: int = 8) -> Mall:
    """Sign-ups and logins hash passwords with Argon2, so they go a few at a time."""
    run = secrets.token_hex(3)
    gate = asyncio.Semaphore(parallel)

    async def gated(handle: str, funds: int = 0) -> Member:
        async with gate:
            return await member(host, port, handle, devices, funds)

    payees = await asyncio.gather(*(gated(f"m{run}s{i}") for i in range(shops)))
    agents = await asyncio.gather(*(gated(f"m{run}a{i}") for i in range(shops)))
    payers = await asyncio.gather(*(gated(f"m{run}p{i}", FUNDS) for i in range(shops)))
    conn = Connection(host, port)
    counters = []
    try:
        for payee, agent in zip(payees, agents, strict=True):
            agency = await _call(
                conn, "POST", "/agencies", {"agent": agent.handle}, bearer(payee.tokens[0])
            )
            body = {"agency_id": agency["id"], "kind": "static", "label": "till"}
            code = await _call(conn, "POST", "/codes", body, bearer(agent.tokens[0]))
            counters.append(Counter(payee, agent, code["token"]))
    finally:
        conn.close()
    return Mall(counters, list(payers))


@dataclass
class MallTape:
    confirm_all: list[float] = field(default_factory=list)  # POST written -> last device
    pay_http: list[float] = field(default_factory=list)
    refused_http: list[float] = field(default_factory=list)  # answer time of each 503
    errors: Tally[str] = field(default_factory=Tally)
    refused: int = 0
    refused_without_retry_after: int = 0
    missing: int = 0
    late_starts: int = 0

    def report(self, seconds: float) -> dict[str, Any]:
        return {
            "completed": len(self.confirm_all),
            "payments_per_s": round(len(self.confirm_all) / seconds, 1) if seconds else 0.0,
            "confirmation_every_device": summarize(self.confirm_all, seconds),
            "payment_http": summarize(self.pay_http, seconds),
            "refused_http": summarize(self.refused_http, seconds),
            "refused": self.refused,
            "refused_without_retry_after": self.refused_without_retry_after,
            "errors": dict(self.errors),
            "missing_confirmations": self.missing,
            "late_starts": self.late_starts,
        }


class LoopLag:
    """How late this generator's own event loop runs a timer while a phase runs. Every
    latency here is read on this loop, so its lag is in every figure: a phase whose generator
    is late by 50 ms cannot show a confirmation faster than that, whatever the server does."""

    PERIOD = 0.01

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.PERIOD)
            self.samples.append(max(0.0, loop.time() - start - self.PERIOD))


class MallFloor:
    def __init__(self, host: str, port: int, mall: Mall, connections: int = 64) -> None:
        self.mall = mall
        self.host = host
        self.port = port
        self.arrivals = Arrivals()
        url = f"ws://{host}:{port}/api/v1/ws"
        people = [m for c in mall.counters for m in (c.payee, c.agent)] + mall.payers
        self.devices = [
            Device(url, token, who.handle, self.arrivals.on_event)
            for who in people
            for token in who.tokens
        ]
        self.per_payment = 3 * len(mall.payers[0].tokens)
        self.free: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(connections):
            self.free.put_nowait(Connection(host, port))
        self._all = list(self.free._queue)  # type: ignore[attr-defined]

    async def open(self, limit: float = 120) -> None:
        for device in self.devices:
            device.start()
        await asyncio.wait_for(asyncio.gather(*(d.ready.wait() for d in self.devices)), limit)

    async def close(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.devices))
        for conn in self._all:
            conn.close()

    def seq_faults(self) -> dict[str, int]:
        return {
            "gaps": sum(d.gaps for d in self.devices),
            "duplicates": sum(d.duplicates for d in self.devices),
            "reconnects": sum(max(0, d.welcomes - 1) for d in self.devices),
        }

    async def payment(self, tape: MallTape) -> float:
        """One payment to its confirmation on every device; how long this payer waits before
        the next: 0 once confirmed, a 503's ``Retry-After``, or a short pause after an error."""
        counter = random.choice(self.mall.counters)
        payer = random.choice(self.mall.payers)
        conn = await self.free.get()
        try:
            headers = {**bearer(payer.tokens[0]), "Idempotency-Key": uuid.uuid4().hex}
            sent = time.time()
            try:
                reply = await conn.request(
                    "POST", "/api/v1/payments", {"code": counter.code, "amount": AMOUNT}, headers
                )
            except (WireError, OSError, TimeoutError) as exc:
                tape.errors[type(exc).__name__] += 1
                return AFTER_ERROR
            answered = time.time()
        finally:
            self.free.put_nowait(conn)
        if reply.status == 503:
            tape.refused += 1
            tape.refused_http.append(answered - sent)
            if not reply.retry_after or not reply.retry_after.isdigit():
                # Missing, or an HTTP date: paycode sends seconds, so either is a fault.
                tape.refused_without_retry_after += 1
                return AFTER_ERROR
            return float(reply.retry_after)
        if reply.status != 201:
            tape.errors[f"payment {reply.status}"] += 1
            return AFTER_ERROR
        tape.pay_http.append(answered - sent)
        payment_id = reply.json()["id"]
        waiting = self.arrivals.expect(payment_id, self.per_payment)
        try:
            times = await asyncio.wait_for(waiting, CONFIRM_TIMEOUT)
        except TimeoutError:
            self.arrivals.forget(payment_id)
            tape.missing += 1
            return AFTER_ERROR
        tape.confirm_all.append(max(times) - sent)
        return 0.0


async def offered(floor: MallFloor, rate: float, seconds: float) -> dict[str, Any]:
    """Payments start as a Poisson process of ``rate``/s; one that finds no free connection
    waits for one and counts as a late start."""
    tape = MallTape()
    running: set[asyncio.Task[float]] = set()
    began = time.perf_counter()
    next_at = began
    with LoopLag() as lag:
        while next_at < began + seconds:
            next_at += random.expovariate(rate)
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if floor.free.empty():
                tape.late_starts += 1
            task = asyncio.create_task(floor.payment(tape))
            running.add(task)
            task.add_done_callback(running.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*running), CONFIRM_TIMEOUT + 5)
    elapsed = time.perf_counter() - began
    result = tape.report(elapsed)
    result["offered_rate"] = round(rate, 1)
    result["generator_lag"] = summarize(lag.samples, elapsed)
    return result


async def saturate(floor: MallFloor, seconds: float, workers: int = 64) -> dict[str, Any]:
    """``workers`` payers paying back to back: the most payments/s the server completes. A
    refused payer waits the ``Retry-After`` it was told, as a conforming client does: payers
    that retried at once would measure what refusing costs, not what paying does."""
    tape = MallTape()
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < deadline:
            pause = await floor.payment(tape)
            if pause:
                await asyncio.sleep(min(pause, max(0.0, deadline - time.perf_counter())))

    began = time.perf_counter()
    with LoopLag() as lag:
        await asyncio.gather(*(loop() for _ in range(workers)))
    elapsed = time.perf_counter() - began
    result = tape.report(elapsed)
    result["generator_lag"] = summarize(lag.samples, elapsed)
    return result
