"""A real webhook receiver for tests: a Starlette app under uvicorn on 127.0.0.1, in a thread.

It records every request (headers, raw body, arrival time), answers as the test scripts it,
counts requests in flight per ``webhook-id``, and verifies signatures with the
``standardwebhooks`` package (the specification's own Python library), never with paycode's
signing code."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.services import free_port


@dataclass(frozen=True)
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str) -> dict[str, Any]:
        """The parsed body if ``secret`` verifies it; raises WebhookVerificationError if not."""
        return Webhook(secret).verify(self.body, self.headers)  # type: ignore[no-any-return]

    def verifies(self, secret: str) -> bool:
        try:
            self.verify(secret)
        except Exception:
            return False
        return True


# (the call, how many calls this path had before it) → status code; may sleep.
Behaviour = Callable[[Call, int], Awaitable[int]]


async def always_ok(_call: Call, _index: int) -> int:
    return 200


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.calls: list[Call] = []
        self.behaviours: dict[str, Behaviour] = {}
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def of(self, name: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path == f"/{name}"]

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        call = Call(request.url.path, dict(request.headers), body, time.time())
        behaviour = self.behaviours.get(call.path.lstrip("/"), always_ok)
        with self._lock:
            index = sum(1 for c in self.calls if c.path == call.path)
            self.calls.append(call)
            key = call.headers.get("webhook-id", "")
            self.in_flight[key] += 1
            self.max_in_flight[key] = max(self.max_in_flight[key], self.in_flight[key])
        try:
            status = await behaviour(call, index)
        finally:
            with self._lock:
                self.in_flight[key] -= 1
        return Response(b"ok", status_code=status)

    def start(self) -> Receiver:
        app = Starlette(routes=[Route("/{name}", self._handle, methods=["POST"])])
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the webhook receiver did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
        self._server = None
        self._thread = None


def until(condition: Callable[[], bool], within: float, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {within} s")
        time.sleep(0.05)


def sleeping(seconds: float, status: int = 200) -> Behaviour:
    async def behaviour(_call: Call, _index: int) -> int:
        await asyncio.sleep(seconds)
        return status

    return behaviour


def statuses(*answers: int, then: int = 200) -> Behaviour:
    """Answer the path's first calls with ``answers`` in turn, then ``then``."""

    async def behaviour(_call: Call, index: int) -> int:
        return answers[index] if index < len(answers) else then

    return behaviour
