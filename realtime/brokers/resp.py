"""One Redis connection speaking RESP2, its replies parsed by hiredis (Redis's own C parser).

The broker needs two things of Redis on the money path: publish a payment's events, and
receive every other instance's. redis-py's asyncio client wraps each received pub/sub message
in a timeout, a retry policy and a health check, and each pipeline in the same: about 45 µs of
CPU per message received and 400 µs per pipeline of three publishes (docs/BENCHMARKS.md,
"Redis without its client's wrapping"), against a payment of about 1.5 ms. Here a command is
bytes written to the transport and a reply is what hiredis hands back in ``data_received``:
there is nothing else per message to pay for. Timeouts, reconnection and health checks belong
to the broker, once per connection rather than once per message.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis

Push = Callable[[Any], None]
Command = Sequence[bytes | str]


class RedisRefused(ConnectionError):
    """Redis answered a command with an error (a wrong password, a command it refuses)."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_redis_url(url: str) -> Address:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"not a Redis URL: {scheme!r}")
    return Address(
        parts.hostname or "127.0.0.1",
        parts.port or 6379,
        scheme == "rediss",
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def encode(commands: Iterable[Command]) -> bytes:
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg.encode() if isinstance(arg, str) else arg
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RespConnection(asyncio.Protocol):
    """Commands go out in one write per batch and their replies come back in order; with
    ``on_push`` the connection is a subscriber's, and every reply is handed to it."""

    def __init__(self, on_push: Push | None = None) -> None:
        self.on_push = on_push
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Each batch waits for its count of replies; they come back in the order sent.
        self._batches: deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = deque()
        self.received = 0

    @classmethod
    async def open(cls, url: str, *, seconds: float, on_push: Push | None = None) -> RespConnection:
        address = parse_redis_url(url)
        loop = asyncio.get_running_loop()
        connection = cls(on_push)
        tls = ssl.create_default_context() if address.tls else None
        await asyncio.wait_for(
            loop.create_connection(
                lambda: connection,
                address.host,
                address.port,
                ssl=tls,
                server_hostname=address.host if tls else None,
            ),
            seconds,
        )
        if address.password is not None:
            auth: list[str] = ["AUTH"]
            if address.username is not None:
                auth.append(address.username)
            auth.append(address.password)
            # Before any subscription, so a subscriber's connection answers it as a reply.
            pushes, connection.on_push = connection.on_push, None
            try:
                await connection.call([auth], seconds)
            except BaseException:
                connection.close()
                raise
            finally:
                connection.on_push = pushes
        return connection

    @property
    def closed(self) -> bool:
        return self.lost.done()

    def write(self, commands: Iterable[Command]) -> None:
        if self.transport is None or self.lost.done():
            raise ConnectionError("the redis connection is closed")
        self.transport.write(encode(commands))

    def send(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        replies: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.write(commands)
        self._batches.append((replies, len(commands), []))
        return replies

    async def call(self, commands: Sequence[Command], seconds: float) -> list[Any]:
        """Send and wait for every reply; an error reply raises ``RedisRefused``. A timeout
        closes the connection: a reply arriving late would be taken for the next batch's."""
        try:
            replies = await asyncio.wait_for(self.send(commands), seconds)
        except TimeoutError:
            self.close()
            raise
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise RedisRefused(str(reply))
        return replies

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += 1
        self.reader.feed(data)
        try:
            reply = self.reader.gets()
            while reply is not False:
                if self.on_push is not None:
                    self.on_push(reply)
                else:
                    self._reply(reply)
                reply = self.reader.gets()
        except hiredis.ProtocolError:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(f"the redis connection was lost: {exc or 'closed'}")
        while self._batches:
            replies, _, _ = self._batches.popleft()
            if not replies.done():
                replies.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(None)

    def _reply(self, reply: Any) -> None:
        if not self._batches:
            self.close()  # a reply to nothing asked: the stream is out of step
            return
        replies, expected, got = self._batches[0]
        got.append(reply)
        if len(got) == expected:
            self._batches.popleft()
            if not replies.done():
                replies.set_result(got)
