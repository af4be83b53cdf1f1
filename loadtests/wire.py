"""A lean HTTP/1.1 keep-alive client on asyncio, for the benchmark only.

The load generator shares the machine's cores with the server, so every microsecond the
client spends is taken from the server; a general-purpose client spends far more per request.
It speaks just what the benchmark needs: one request at a time per connection, bodies
framed by Content-Length (Starlette always sends one for JSON responses).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any


class WireError(RuntimeError):
    """The server answered something this client cannot frame, or closed mid-response."""


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    retry_after: str | None = None

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Reply] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(WireError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        reply = self._parse()
        if reply is not None:
            self.waiter.set_result(reply)

    def _parse(self) -> Reply | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).split(b"\r\n")
        length = None
        retry_after = None
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            elif name.strip().lower() == b"retry-after":
                retry_after = value.strip().decode("latin-1")
            elif name.strip().lower() == b"transfer-encoding":
                raise WireError("chunked responses are not supported by the bench client")
        length = length or 0
        if len(self.buffer) < end + 4 + length:
            return None
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        return Reply(int(head[0].split(b" ", 2)[1]), body, retry_after)


class Connection:
    """One keep-alive connection; reconnects by itself if the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._proto: _Protocol | None = None

    async def _ensure(self) -> _Protocol:
        if self._proto is None or self._proto.closed:
            loop = asyncio.get_running_loop()
            _, proto = await loop.create_connection(_Protocol, self.host, self.port)
            self._proto = proto
        return self._proto

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        limit: float = 30.0,
    ) -> Reply:
        proto = await self._ensure()
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if payload:
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(payload)}")
        lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
        loop = asyncio.get_running_loop()
        proto.waiter = loop.create_future()
        assert proto.transport is not None
        proto.transport.write(raw)
        return await asyncio.wait_for(proto.waiter, limit)

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
