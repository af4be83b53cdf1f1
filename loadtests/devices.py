"""One logged-in device's WebSocket (spec §8), as the benchmark sees it: it says hello,
resumes with ``after`` = the last seq it saw, checks that seq has no gaps and no repeats,
and reconnects by itself with jittered exponential backoff."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from typing import Any

from pydantic_core import from_json

from loadtests import ws_wire

SUBPROTOCOL = "paycode.v1.json"
OnEvent = Callable[["Device", int, dict[str, Any], float], None]


class Device:
    def __init__(
        self,
        url: str,
        token: str,
        account: str,
        on_event: OnEvent | None = None,
        *,
        first_backoff: float = 0.2,
        max_backoff: float = 8.0,
    ) -> None:
        self.url = url
        self.token = token
        self.account = account
        self.on_event = on_event
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.last_seq: int | None = None
        self.server_last_seq: int | None = None
        self.gaps = 0
        self.duplicates = 0
        self.events = 0
        self.welcomes = 0
        self.failed_attempts = 0
        self.errors: list[str] = []
        self.ready = asyncio.Event()
        self._ws: ws_wire.LeanSocket | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def drop(self) -> None:
        """Cut the TCP connection without a closing handshake, as a lost network would."""
        self.ready.clear()
        if self._ws is not None:
            self._ws.transport.abort()

    async def _run(self) -> None:
        backoff = self.first_backoff
        while not self._stopping:
            welcomes = self.welcomes
            try:
                await self._session()
            except (OSError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                # A connection that was welcomed and then lost is not a failed attempt.
                if self.welcomes == welcomes:
                    self.failed_attempts += 1
                    if len(self.errors) < 5:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
            if self._stopping:
                return
            self.ready.clear()
            if self.welcomes > welcomes:
                backoff = self.first_backoff
            # Full jitter keeps thousands of clients that lost the server together from
            # coming back together.
            await asyncio.sleep(random.uniform(0, backoff))
            backoff = min(backoff * 2, self.max_backoff)

    async def _session(self) -> None:
        welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_message(raw: str | bytes) -> None:
            if welcomed.done():
                self._on_frame(raw)
                return
            # Taken in here, not after an await: an event may come in the same read.
            welcome = from_json(raw)
            if welcome.get("type") != "welcome":
                raise ValueError(f"expected welcome, got {welcome!r}"[:200])
            self.server_last_seq = int(welcome["last_seq"])
            if self.last_seq is None:
                self.last_seq = self.server_last_seq
            welcomed.set_result(None)

        ws = await ws_wire.connect(self.url, SUBPROTOCOL, on_message, seconds=30)
        self._ws = ws
        try:
            ws.send(json.dumps({"type": "hello", "token": self.token, "after": self.last_seq}))
            done, _ = await asyncio.wait(
                (welcomed, ws.closed), timeout=30, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                raise TimeoutError("no welcome within 30 s")
            if welcomed not in done:
                await ws.closed
            self.welcomes += 1
            self.ready.set()
            # Every later frame is handled by on_message as it arrives; this waits for the end.
            await ws.closed
        finally:
            ws.transport.abort()

    def _on_frame(self, raw: str | bytes) -> None:
        frame = from_json(raw)
        if frame.get("type") != "event":
            return
        seq, last = int(frame["seq"]), self.last_seq
        # Frames reach here only after the welcome, which set the seq they follow.
        assert last is not None
        if seq <= last:
            self.duplicates += 1
            return
        if seq != last + 1:
            self.gaps += 1
        self.last_seq = seq
        self.events += 1
        if self.on_event is not None:
            self.on_event(self, seq, frame["event"], time.time())


class Arrivals:
    """Meets payments with their confirmation frames, whichever comes first: a frame may beat
    the 201 of its payment because the server publishes before it answers."""

    def __init__(self) -> None:
        self._times: dict[str, list[float]] = {}
        self._waiters: dict[str, tuple[int, asyncio.Future[list[float]]]] = {}

    def on_event(self, _device: Device, _seq: int, event: dict[str, Any], at: float) -> None:
        if event.get("type") != "payment.succeeded":
            return
        payment_id = event["data"]["id"]
        times = self._times.setdefault(payment_id, [])
        times.append(at)
        self._check(payment_id)

    def expect(self, payment_id: str, devices: int) -> asyncio.Future[list[float]]:
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        self._waiters[payment_id] = (devices, future)
        self._times.setdefault(payment_id, [])
        self._check(payment_id)
        return future

    def forget(self, payment_id: str) -> None:
        self._waiters.pop(payment_id, None)
        self._times.pop(payment_id, None)

    def _check(self, payment_id: str) -> None:
        waiting = self._waiters.get(payment_id)
        if waiting is None:
            return
        devices, future = waiting
        times = self._times[payment_id]
        if len(times) >= devices and not future.done():
            future.set_result(list(times))
            self._waiters.pop(payment_id, None)
            self._times.pop(payment_id, None)
