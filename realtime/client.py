"""A small asyncio client of the live-confirmation WebSocket (spec §8).

It says hello, yields each event once and in `seq` order, and when the connection drops
(server restart, 1013 for falling behind, network) reconnects with jittered backoff and
``after`` = the last `seq` it yielded, so nothing is missed and nothing is shown twice.
A revoked or bad token (4401) ends the stream with `Unauthorized`.

    async with LiveClient("http://127.0.0.1:8000", token) as live:
        async for event in live:
            print(event.seq, event.type, event.data)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from realtime.protocol import CLOSE_UNAUTHORIZED, JSON, MSGPACK

WS_PATH = "/api/v1/ws"


class Unauthorized(Exception):
    """The server refused the token (close 4401): reconnecting cannot help."""


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    type: str
    created_at: str
    data: dict[str, Any] = field(default_factory=dict)


def ws_url(base_url: str) -> str:
    """`http(s)://host[:port]` (the server's public URL) or a ws(s) URL → the socket URL."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base if base.endswith(WS_PATH) else base + WS_PATH


class LiveClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        after: int | None = None,
        fmt: str = MSGPACK,
        backoff_base: float = 0.2,
        backoff_cap: float = 10.0,
        open_timeout: float = 10.0,
    ) -> None:
        if fmt not in (MSGPACK, JSON):
            raise ValueError(f"unknown subprotocol {fmt}")
        self.url = ws_url(base_url)
        self.token = token
        self.fmt = fmt
        self.last_seq = after
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.open_timeout = open_timeout
        self.welcome: dict[str, Any] | None = None
        self.connects = 0
        self.close_codes: list[int | None] = []
        self.duplicates = 0
        self._ws: ClientConnection | None = None
        self._closing = False

    async def __aenter__(self) -> LiveClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    def _encode(self, frame: dict[str, Any]) -> str | bytes:
        if self.fmt == MSGPACK:
            return msgpack.packb(frame, use_bin_type=True)  # type: ignore[no-any-return]
        return json.dumps(frame, separators=(",", ":"))

    def _decode(self, message: str | bytes) -> dict[str, Any]:
        if isinstance(message, bytes):
            return msgpack.unpackb(message, raw=False)  # type: ignore[no-any-return]
        return json.loads(message)  # type: ignore[no-any-return]

    async def events(self) -> AsyncIterator[Event]:
        """Every event after `last_seq`, forever (until `close` or a 4401)."""
        attempt = 0
        while not self._closing:
            try:
                async with connect(
                    self.url,
                    subprotocols=[self.fmt],  # type: ignore[list-item]
                    compression=None,
                    open_timeout=self.open_timeout,
                    max_size=2**24,
                ) as ws:
                    self._ws = ws
                    await ws.send(
                        self._encode({"type": "hello", "token": self.token, "after": self.last_seq})
                    )
                    async for message in ws:
                        frame = self._decode(message)
                        kind = frame.get("type")
                        if kind == "welcome":
                            self.welcome = frame
                            self.connects += 1
                            attempt = 0
                            if self.last_seq is None:
                                # Live only this time; a reconnect replays from here.
                                self.last_seq = int(frame["last_seq"])
                        elif kind == "event":
                            seq = int(frame["seq"])
                            if self.last_seq is not None and seq <= self.last_seq:
                                self.duplicates += 1
                                continue
                            self.last_seq = seq
                            body = frame["event"]
                            yield Event(
                                seq, body["type"], body["created_at"], body.get("data") or {}
                            )
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                self.close_codes.append(code)
                if code == CLOSE_UNAUTHORIZED:
                    raise Unauthorized("the server refused the token (4401)") from exc
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if isinstance(exc, InvalidURI):
                    raise
                self.close_codes.append(None)
            finally:
                self._ws = None
            if self._closing:
                return
            delay = random.uniform(
                0, min(self.backoff_cap, self.backoff_base * 2 ** min(attempt, 20))
            )
            attempt += 1
            await asyncio.sleep(delay)
