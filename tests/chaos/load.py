"""Steady load for fault tests: payer threads paying a static code with an Idempotency-Key
each (a 502/503/504 or a broken connection is retried with the SAME key until it ends in
201), devices listening through `realtime.client.LiveClient`, and the checks that nothing
was lost or charged twice once the fault is over."""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from realtime.client import LiveClient
from realtime.protocol import JSON, MSGPACK
from tests.api import Api, User
from tests.conftest import ADMIN_TOKEN

ROOT = Path(__file__).resolve().parents[2]
REPORT_DIR = ROOT / "build" / "chaos"
PAYER_FUNDS = 100_000_000
# How long one key may keep failing before the test gives up on it (a fault is seconds long).
KEY_DEADLINE = 120.0
RETRY_PAUSE = 0.1
RETRYABLE = (502, 503, 504)


@dataclass
class Accepted:
    key: str
    payment_id: str
    amount: int
    payer: str
    attempts: int
    seconds: float


@dataclass
class Shop:
    """A payee with an agent's static code, funded payers, and the devices that listen."""

    payee: User
    agent: User
    payers: list[User]
    code_token: str
    listeners: list[User]

    @classmethod
    def open(cls, base_url: str, payers: int = 4) -> Shop:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            api = Api(http, ADMIN_TOKEN)
            payee, agent = api.user(), api.user()
            people = [api.user(funds=PAYER_FUNDS) for _ in range(payers)]
            agency = api.agency(payee, agent, label="Counter 1")
            code = api.post("/codes", agent, json={"agency_id": agency["id"], "kind": "static"})
            assert code.status_code == 201, code.text
            listeners = [api.log_in(agent.handle, f"till-{i}") for i in range(3)]
            listeners += [api.log_in(payee.handle, f"office-{i}") for i in range(3)]
            listeners += [api.log_in(p.handle, "phone-2") for p in people]
        return cls(payee, agent, people, str(code.json()["token"]), listeners)


class Payers:
    """One thread per payer, paying again and again until told to stop; every key it starts
    is driven to a 201 (or recorded as a failure) before the thread ends."""

    def __init__(self, base_url: str, shop: Shop) -> None:
        self.base_url = base_url
        self.shop = shop
        self.accepted: list[Accepted] = []
        self.unexpected: list[str] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(payer, i), daemon=True)
            for i, payer in enumerate(shop.payers)
        ]

    def start(self) -> Payers:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(KEY_DEADLINE + 30)
        assert not any(t.is_alive() for t in self._threads), "a payer thread is stuck"

    def wait_for_more(self, count: int, timeout: float = 60) -> None:
        """Block until `count` more payments are accepted than now."""
        target = len(self.accepted) + count
        deadline = time.monotonic() + timeout
        while len(self.accepted) < target:
            assert not self.unexpected, self.unexpected[:3]
            assert time.monotonic() < deadline, f"payments stalled at {len(self.accepted)}"
            time.sleep(0.05)

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _run(self, payer: User, index: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=15) as http:
            number = 0
            while not self._stop.is_set():
                number += 1
                self._pay_one(http, payer, 100 + (index * 1000) + number % 500)
                time.sleep(0.01)

    def _pay_one(self, http: httpx.Client, payer: User, amount: int) -> None:
        key = uuid.uuid4().hex
        headers = {**payer.headers, "Idempotency-Key": key}
        body = {"code": self.shop.code_token, "amount": amount}
        started = time.monotonic()
        attempts = 0
        self._count("keys")
        while True:
            attempts += 1
            self._count("requests")
            if attempts == 2:
                self._count("retried_keys")
            try:
                response = http.post("/api/v1/payments", json=body, headers=headers)
            except httpx.TransportError as exc:
                self._count(f"connection_error:{type(exc).__name__}")
                self._count("connection_errors")
            else:
                if response.status_code == 201:
                    if attempts > 1:
                        self._count("retries_that_succeeded")
                    with self._lock:
                        self.accepted.append(
                            Accepted(
                                key,
                                str(response.json()["id"]),
                                amount,
                                payer.handle,
                                attempts,
                                time.monotonic() - started,
                            )
                        )
                    return
                if response.status_code not in RETRYABLE:
                    with self._lock:
                        self.unexpected.append(f"{response.status_code} {response.text[:200]}")
                    return
                self._count(f"status_{response.status_code}")
            if time.monotonic() - started > KEY_DEADLINE:
                with self._lock:
                    self.unexpected.append(f"key {key} still failing after {KEY_DEADLINE} s")
                return
            time.sleep(RETRY_PAUSE)


@dataclass
class Listener:
    user: User
    client: LiveClient
    seqs: list[int] = field(default_factory=list)
    payments: list[str] = field(default_factory=list)
    seen_closes: int = 0
    seen_connects: int = 0
    down_since: float | None = None
    max_down: float = 0.0
    reconnects: int = 0


class Devices:
    """LiveClients on an event loop of their own thread, each replaying from seq 1 and then
    following live; a watcher notes when each socket drops and when it is welcomed again."""

    def __init__(self, base_url: str, shop: Shop, backoff_cap: float = 2.0) -> None:
        self.listeners = [
            Listener(
                user,
                LiveClient(
                    base_url,
                    user.token,
                    after=0,
                    fmt=(MSGPACK, JSON)[i % 2],
                    backoff_cap=backoff_cap,
                ),
            )
            for i, user in enumerate(shop.listeners)
        ]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._tasks: list[asyncio.Task[None]] = []
        self.errors: list[str] = []

    def start(self, timeout: float = 30) -> Devices:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._begin(), self._loop).result(10)
        deadline = time.monotonic() + timeout
        while not all(listener.client.connects for listener in self.listeners):
            assert time.monotonic() < deadline, "devices did not connect"
            time.sleep(0.05)
        return self

    async def _begin(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(item)) for item in self.listeners]
        self._tasks.append(asyncio.create_task(self._watch()))

    async def _listen(self, item: Listener) -> None:
        try:
            async for event in item.client:
                item.seqs.append(event.seq)
                if event.type == "payment.succeeded":
                    item.payments.append(str(event.data["id"]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors.append(f"{item.user.handle}: {exc!r}")

    async def _watch(self) -> None:
        while True:
            now = time.monotonic()
            for item in self.listeners:
                closes, connects = len(item.client.close_codes), item.client.connects
                if closes > item.seen_closes:
                    item.seen_closes = closes
                    if item.down_since is None:
                        item.down_since = now
                if connects > item.seen_connects:
                    item.seen_connects = connects
                    if item.down_since is not None:
                        item.max_down = max(item.max_down, now - item.down_since)
                        item.reconnects += 1
                        item.down_since = None
            await asyncio.sleep(0.02)

    def wait_caught_up(self, final: dict[str, int], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            behind = [
                (item.user.handle, item.seqs[-1] if item.seqs else 0, final[item.user.handle])
                for item in self.listeners
                if (item.seqs[-1] if item.seqs else 0) < final[item.user.handle]
            ]
            if not behind:
                return
            assert time.monotonic() < deadline, f"devices behind (handle, have, want): {behind}"
            time.sleep(0.05)

    def stop(self) -> None:
        async def end() -> None:
            for item in self.listeners:
                await item.client.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(end(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def last_seq(api: Api, user: User) -> int:
    after = 0
    while True:
        page = api.get(f"/events?after={after}&limit=200", user).json()["data"]
        if not page:
            return after
        after = page[-1]["seq"]


def listed_payments(api: Api, user: User) -> list[str]:
    ids: list[str] = []
    cursor = ""
    while True:
        page = api.get(f"/payments?role=payee&limit=200{cursor}", user).json()
        ids += [p["id"] for p in page["data"]]
        if not page["next_cursor"]:
            return ids
        cursor = f"&cursor={page['next_cursor']}"


def verify_books(database_url: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "verify", "--database-url", database_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"paycode verify failed:\n{result.stdout}{result.stderr}"
    return result.stdout.strip()


def check_nothing_lost(
    base_url: str, database_url: str, shop: Shop, payers: Payers, devices: Devices
) -> dict[str, Any]:
    """After the fault and the load: the books verify; every 201 the payers saw is one
    payment, listed once, charged once; every device holds its account's whole gapless seq
    and each payment event once. Returns the figures of the run."""
    assert not payers.unexpected, payers.unexpected[:5]
    accepted = payers.accepted
    ids = [a.payment_id for a in accepted]
    assert len(set(ids)) == len(ids), "two keys were answered with the same payment"
    assert len({a.key for a in accepted}) == len(accepted)
    assert payers.counts["keys"] == len(accepted), "a key ended without a 201"

    books = verify_books(database_url)
    with httpx.Client(base_url=base_url, timeout=30) as http:
        api = Api(http, ADMIN_TOKEN)
        listed = listed_payments(api, shop.payee)
        assert sorted(listed) == sorted(ids), "listed payments differ from the 201s seen"
        assert api.get("/me", shop.payee).json()["balance"] == sum(a.amount for a in accepted)
        for payer in shop.payers:
            spent = sum(a.amount for a in accepted if a.payer == payer.handle)
            assert api.get("/me", payer).json()["balance"] == PAYER_FUNDS - spent
        handles = {u.handle for u in shop.listeners}
        users = {u.handle: u for u in shop.listeners}
        final = {h: last_seq(api, users[h]) for h in handles}

    devices.wait_caught_up(final)
    devices.stop()
    assert not devices.errors, devices.errors
    for item in devices.listeners:
        handle = item.user.handle
        assert item.seqs == list(range(1, final[handle] + 1)), f"{handle}: gap or repeat"
        assert item.client.duplicates == 0
        if handle in (shop.payee.handle, shop.agent.handle):
            expected = ids
        else:
            expected = [a.payment_id for a in accepted if a.payer == handle]
        assert sorted(item.payments) == sorted(expected), f"{handle}: payment events differ"

    close_codes: collections.Counter[str] = collections.Counter()
    for item in devices.listeners:
        close_codes.update(str(code) for code in item.client.close_codes)
    return {
        "payments_attempted": payers.counts["keys"],
        "payments_accepted": len(accepted),
        "requests": payers.counts["requests"],
        "status_503": payers.counts["status_503"],
        "status_502": payers.counts["status_502"],
        "status_504": payers.counts["status_504"],
        "connection_errors": payers.counts["connection_errors"],
        "retried_keys": payers.counts["retried_keys"],
        "retries_that_succeeded": payers.counts["retries_that_succeeded"],
        "max_attempts_for_one_key": max(a.attempts for a in accepted),
        "max_seconds_for_one_key": round(max(a.seconds for a in accepted), 2),
        "devices": len(devices.listeners),
        "events_per_device": {
            f"{item.user.handle}/{i}": len(item.seqs) for i, item in enumerate(devices.listeners)
        },
        "device_reconnects": sum(item.reconnects for item in devices.listeners),
        "max_reconnect_seconds": round(max(item.max_down for item in devices.listeners), 2),
        "close_codes": dict(close_codes),
        "verify": books,
    }


def report(name: str, figures: dict[str, Any]) -> None:
    """Keep the figures of the run in build/chaos/ (docs/RELIABILITY.md quotes them)."""
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\n{name}: {json.dumps(figures)}")
