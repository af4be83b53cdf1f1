"""The shop floor under Locust: counters issue dynamic codes and wait for their confirmation,
payers scan and pay them, payee dashboards watch the event stream.

Run against a running server (``make loadtest`` starts one for you)::

    PAYCODE_ADMIN_TOKEN=... locust -f loadtests/locustfile.py --headless \\
        -u 30 -r 10 -t 60s --host http://127.0.0.1:8000

Every worker process makes its own shop (one payee, an agent account per CounterUser, a
funded account per PayerUser). Codes go from counters to payers through a queue: inside one
process a gevent queue; with ``PAYCODE_LOAD_QUEUE=redis://host:port/db`` a Redis list that
every worker of a distributed run shares (set it for ``--processes``/``--worker`` runs, since
Locust may give one worker only counters and another only payers).

Confirmations show in Locust's stats as request type ``WS``: ``confirmation`` is payment
commit (the payment's ``created_at``) to the frame on the counter's socket; ``seq gap`` and
``reconnect`` are failures of the event stream.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import gevent
from gevent.event import AsyncResult
from gevent.lock import Semaphore
from gevent.queue import Empty, Queue
from locust import FastHttpUser, between, constant, events, task
from locust.exception import StopUser
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

PASSWORD = "load-password-123"
ADMIN_TOKEN = os.environ.get("PAYCODE_ADMIN_TOKEN", "")
FUNDS = 10**11
CONFIRM_TIMEOUT = 30.0
ITEMS = [
    {"name": "flat white", "quantity": 2, "unit_amount": 450},
    {"name": "almond croissant", "quantity": 1, "unit_amount": 350},
]


def epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def fire(name: str, started: float | None, *, error: str | None = None, length: int = 0) -> None:
    """Record a WebSocket observation as a Locust request of type WS."""
    elapsed = 0.0 if started is None else max(0.0, (time.time() - started) * 1000)
    events.request.fire(
        request_type="WS",
        name=name,
        response_time=elapsed,
        response_length=length,
        exception=RuntimeError(error) if error else None,
        context={},
    )


class CodeQueue:
    """Issued code tokens waiting for a payer."""

    def __init__(self, url: str | None) -> None:
        self.local: Queue[str] = Queue()
        self.redis: Any = None
        self.key = "paycode:loadtest:codes"
        if url:
            import redis

            self.redis = redis.Redis.from_url(url)

    def put(self, token: str) -> None:
        if self.redis is not None:
            self.redis.lpush(self.key, token)
        else:
            self.local.put(token)

    def get(self, wait: float) -> str | None:
        if self.redis is not None:
            item = self.redis.brpop([self.key], timeout=max(1, int(wait)))
            return item[1].decode() if item else None
        try:
            return self.local.get(timeout=wait)
        except Empty:
            return None


CODES = CodeQueue(os.environ.get("PAYCODE_LOAD_QUEUE"))


def new_handle(role: str) -> str:
    return f"{role}{secrets.token_hex(5)}"


def _json(response: Any) -> Any:
    return json.loads(response.content or b"null")


class Shop:
    """This worker process's payee, made once by whichever user needs it first."""

    lock = Semaphore()
    handle: str | None = None
    token: str | None = None

    @classmethod
    def payee(cls, user: FastHttpUser) -> tuple[str, str]:
        with cls.lock:
            if cls.handle is None or cls.token is None:
                handle = new_handle("shop")
                cls.token = sign_up(user, handle, "dashboard")
                cls.handle = handle
            return cls.handle, cls.token


def sign_up(user: FastHttpUser, handle: str, device: str, funds: int = 0) -> str:
    """Create the account, fund it if asked, log one device in; return its token."""
    body = {"handle": handle, "display_name": handle.title(), "password": PASSWORD}
    with user.client.post(
        "/api/v1/accounts", json=body, name="setup: sign up", catch_response=True
    ) as reply:
        if reply.status_code != 201:
            reply.failure(f"sign up {reply.status_code}: {reply.text[:200]}")
            raise StopUser()
    if funds:
        if not ADMIN_TOKEN:
            raise RuntimeError("set PAYCODE_ADMIN_TOKEN to the server's admin token")
        for attempt in range(5):
            with user.client.post(
                "/api/v1/admin/deposits",
                json={"handle": handle, "amount": funds},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                name="setup: deposit",
                catch_response=True,
            ) as reply:
                # A lost race (409 conflict) or a busy database (503) is the server asking
                # for a retry, which a deposit of a fresh account may safely get.
                if reply.status_code == 503 or (
                    reply.status_code == 409 and b'"conflict"' in (reply.content or b"")
                ):
                    reply.success()
                    gevent.sleep(0.05 * 2**attempt)
                    continue
                if reply.status_code != 201:
                    reply.failure(f"deposit {reply.status_code}: {reply.text[:200]}")
                    raise StopUser()
                break
    return log_in(user, handle, device)


def log_in(user: FastHttpUser, handle: str, device: str) -> str:
    body = {"handle": handle, "password": PASSWORD, "device_name": device}
    with user.client.post(
        "/api/v1/sessions", json=body, name="setup: log in", catch_response=True
    ) as reply:
        if reply.status_code != 201:
            reply.failure(f"log in {reply.status_code}: {reply.text[:200]}")
            raise StopUser()
        return str(_json(reply)["token"])


class Stream:
    """One device's WebSocket, read by its own greenlet: gapless seq is checked, a lost
    connection is resumed with ``after`` = the last seq seen."""

    def __init__(self, base_url: str, token: str, on_event: Callable[[dict[str, Any]], None]):
        self.url = base_url.replace("http", "ws", 1).rstrip("/") + "/api/v1/ws"
        self.token = token
        self.on_event = on_event
        self.last_seq: int | None = None
        self.events = 0
        self.ws: ClientConnection | None = None
        self.stopping = False
        self.ready = AsyncResult()
        self.reader = gevent.spawn(self._run)

    def _session(self, started: float, resumed: bool) -> None:
        with connect(
            self.url,
            subprotocols=["paycode.v1.json"],  # type: ignore[list-item]
            compression=None,
            open_timeout=30,
        ) as ws:
            self.ws = ws
            ws.send(json.dumps({"type": "hello", "token": self.token, "after": self.last_seq}))
            welcome = json.loads(ws.recv(timeout=30))
            if welcome.get("type") != "welcome":
                raise WebSocketException(f"expected welcome, got {welcome}")
            if self.last_seq is None:
                self.last_seq = int(welcome["last_seq"])
            if resumed:
                fire("reconnect", started)
            self.ready.set(True)
            for raw in ws:
                self._frame(raw)

    def _run(self) -> None:
        backoff = 0.2
        resumed = False
        while not self.stopping:
            started = time.time()
            try:
                self._session(started, resumed)
                backoff = 0.2
            except (OSError, TimeoutError, WebSocketException, ValueError) as exc:
                if self.stopping:
                    return
                fire("reconnect", started, error=f"{type(exc).__name__}: {exc}")
            if self.stopping:
                return
            resumed = True
            gevent.sleep(backoff * (0.5 + secrets.randbelow(1000) / 1000))
            backoff = min(backoff * 2, 8.0)

    def _frame(self, raw: str | bytes) -> None:
        frame = json.loads(raw)
        if frame.get("type") != "event":
            return
        seq = int(frame["seq"])
        assert self.last_seq is not None
        if seq <= self.last_seq:
            fire("seq duplicate", None, error=f"seq {seq} after {self.last_seq}")
            return
        if seq != self.last_seq + 1:
            fire("seq gap", None, error=f"seq {seq} after {self.last_seq}")
        self.last_seq = seq
        self.events += 1
        self.on_event(frame["event"])

    def close(self) -> None:
        self.stopping = True
        if self.ws is not None:
            self.ws.close()
        self.reader.kill(block=False)


class CounterUser(FastHttpUser):
    """A counter tablet of one agent: issues a dynamic code with items for each sale and
    waits for the confirmation on its WebSocket."""

    weight = 4
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        _, payee_token = Shop.payee(self)
        handle = new_handle("counter")
        self.token = sign_up(self, handle, "counter tablet")
        with self.client.post(
            "/api/v1/agencies",
            json={"agent": handle, "label": f"Counter {handle}"},
            headers={"Authorization": f"Bearer {payee_token}"},
            name="setup: agency",
            catch_response=True,
        ) as reply:
            if reply.status_code != 201:
                reply.failure(f"agency {reply.status_code}: {reply.text[:200]}")
                raise StopUser()
            self.agency_id = _json(reply)["id"]
        self.waiting: dict[str, AsyncResult] = {}
        self.stream = Stream(self.host, self.token, self._on_event)
        self.stream.ready.get(timeout=30)

    def on_stop(self) -> None:
        self.stream.close()

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") != "payment.succeeded":
            return
        data = event["data"]
        waiter = self.waiting.pop(data.get("code_id") or "", None)
        if waiter is not None:
            waiter.set((time.time(), epoch(data["created_at"])))

    @task
    def sell(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "Idempotency-Key": uuid.uuid4().hex}
        body = {"agency_id": self.agency_id, "kind": "dynamic", "items": ITEMS}
        with self.client.post(
            "/api/v1/codes", json=body, headers=headers, name="/codes", catch_response=True
        ) as reply:
            if reply.status_code != 201:
                reply.failure(f"{reply.status_code}: {reply.text[:200]}")
                return
            code = _json(reply)
        waiter = AsyncResult()
        self.waiting[code["id"]] = waiter
        CODES.put(code["token"])
        try:
            received, committed = waiter.get(timeout=CONFIRM_TIMEOUT)
        except gevent.Timeout:
            self.waiting.pop(code["id"], None)
            fire("confirmation", None, error=f"no confirmation within {CONFIRM_TIMEOUT}s")
            return
        events.request.fire(
            request_type="WS",
            name="confirmation",
            response_time=max(0.0, (received - committed) * 1000),
            response_length=0,
            exception=None,
            context={},
        )


class PayerUser(FastHttpUser):
    """A customer's phone: takes the next code from the queue, scans it, checks the amount
    and pays it with an Idempotency-Key."""

    weight = 4
    wait_time = constant(0)

    def on_start(self) -> None:
        self.token = sign_up(self, new_handle("payer"), "phone", FUNDS)

    @task
    def pay(self) -> None:
        token = CODES.get(wait=2.0)
        if token is None:
            return
        auth = {"Authorization": f"Bearer {self.token}"}
        with self.client.get(
            f"/api/v1/scan/{token}", headers=auth, name="/scan/[token]", catch_response=True
        ) as reply:
            if reply.status_code != 200:
                reply.failure(f"{reply.status_code}: {reply.text[:200]}")
                return
            view = _json(reply)
            if view.get("status") != "active" or view.get("amount") != 1250:
                reply.failure(f"unexpected code view: {view}")
                return
        headers = {**auth, "Idempotency-Key": uuid.uuid4().hex}
        with self.client.post(
            "/api/v1/payments",
            json={"code": token},
            headers=headers,
            name="/payments",
            catch_response=True,
        ) as reply:
            if reply.status_code != 201:
                reply.failure(f"{reply.status_code}: {reply.text[:200]}")


class WatcherUser(FastHttpUser):
    """The payee's dashboard: a WebSocket only, counting events and checking seq."""

    weight = 1
    wait_time = constant(1)

    def on_start(self) -> None:
        handle, _ = Shop.payee(self)
        token = log_in(self, handle, "dashboard")
        self.stream = Stream(self.host, token, self._on_event)
        self.stream.ready.get(timeout=30)

    def on_stop(self) -> None:
        self.stream.close()

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "payment.succeeded":
            fire("dashboard payment", epoch(event["data"]["created_at"]))

    @task
    def watch(self) -> None:
        gevent.sleep(1)
