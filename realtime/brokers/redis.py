"""Redis pub/sub broker: one channel per account, plus one control channel.

An instance subscribes to an account's channel while it holds a socket of that account, so
Redis sends each instance only what it will deliver. One pub/sub connection carries every
subscription and a second one the publishes (realtime/brokers/resp.py); a listener task
watches the first and, when Redis drops, reconnects with capped, jittered exponential
backoff, re-subscribes everything and tells the sink to resync, because messages published
while it was away are gone (the outbox still has them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterable
from typing import Any

from realtime.brokers.base import Broker, BrokerSink
from realtime.brokers.resp import Command, RedisRefused, RespConnection

log = logging.getLogger("paycode.broker")

CHANNEL_PREFIX = "paycode:acct:"
CONTROL_CHANNEL = "paycode:control"
CHANNEL_PREFIX_BYTES = CHANNEL_PREFIX.encode()
CONTROL_CHANNEL_BYTES = CONTROL_CHANNEL.encode()


class BrokerUnavailable(ConnectionError):
    """Redis is not reachable right now; the caller relies on the outbox to catch up."""


def channel_of(account_id: str) -> str:
    return f"{CHANNEL_PREFIX}{account_id}"


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)], so instances that lost Redis
    together do not all come back in the same instant."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 30))))


class RedisBroker(Broker):
    def __init__(
        self,
        url: str,
        sink: BrokerSink,
        *,
        backoff_base: float = 0.05,
        backoff_cap: float = 2.0,
        confirm_timeout: float = 2.0,
        command_timeout: float = 5.0,
        health_interval: float = 10.0,
    ) -> None:
        super().__init__(url, sink)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.confirm_timeout = confirm_timeout
        self.command_timeout = command_timeout
        self.health_interval = health_interval
        self._subscriber: RespConnection | None = None
        self._commands: RespConnection | None = None
        self._opening_commands = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._connected = False
        self._confirms: dict[str, deque[asyncio.Future[None]]] = {}
        self._awaiting_resync: set[str] = set()
        self._refusal: RedisRefused | None = None
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="paycode-redis-listener")

    async def disconnect(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self._connected = False
        for connection in (self._subscriber, self._commands):
            if connection is not None:
                connection.close()
        self._subscriber = self._commands = None
        self.subscriptions.clear()

    async def subscribe(self, account_id: str) -> None:
        self.subscriptions.add(account_id)
        subscriber = self._subscriber
        if subscriber is None or subscriber.closed:
            return  # the listener subscribes everything when it (re)connects
        channel = channel_of(account_id)
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirms.setdefault(channel, deque()).append(confirmed)
        try:
            subscriber.write([("SUBSCRIBE", channel)])
            await asyncio.wait_for(asyncio.shield(confirmed), self.confirm_timeout)
        except (ConnectionError, TimeoutError) as exc:
            # The listener will notice, reconnect, re-subscribe and resync every socket.
            log.warning("subscribe %s not confirmed: %s", channel, exc.__class__.__name__)

    async def unsubscribe(self, account_id: str) -> None:
        self.subscriptions.discard(account_id)
        subscriber = self._subscriber
        if subscriber is not None and not subscriber.closed:
            subscriber.write([("UNSUBSCRIBE", channel_of(account_id))])

    async def publish(self, messages: Iterable[tuple[str, bytes]]) -> None:
        await self._command([("PUBLISH", channel_of(a), payload) for a, payload in messages])

    async def publish_control(self, payload: bytes) -> None:
        await self._command([("PUBLISH", CONTROL_CHANNEL, payload)])

    async def _command(self, commands: list[Command]) -> None:
        if not commands:
            return
        if not self._connected:
            raise BrokerUnavailable("redis is not connected")
        # A connection dies with a Redis restart; the batch goes again on a fresh one, so a
        # publish may arrive twice, which sockets drop by seq.
        for attempt in range(3):
            try:
                connection = await self._command_connection()
                await connection.call(commands, self.command_timeout)
                return
            except (OSError, TimeoutError) as exc:
                # ConnectionError (and RedisRefused) are OSErrors.
                if attempt == 2:
                    raise BrokerUnavailable(f"redis: {exc.__class__.__name__}") from exc
                await asyncio.sleep(backoff_delay(attempt, self.backoff_base, 0.5))

    async def _command_connection(self) -> RespConnection:
        connection = self._commands
        if connection is not None and not connection.closed:
            return connection
        async with self._opening_commands:
            connection = self._commands
            if connection is None or connection.closed:
                connection = await RespConnection.open(self.url, seconds=self.confirm_timeout)
                self._commands = connection
            return connection

    async def _listen(self) -> None:
        attempt = 0
        while True:
            try:
                subscriber = await self._open_subscriber()
                await self._watch(subscriber)
                if self._connected:
                    attempt = 0
                raise self._refusal or ConnectionError("the subscription connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                was_connected = self._connected
                self._connected = False
                self._fail_confirms()
                if self._subscriber is not None:
                    self._subscriber.close()
                    self._subscriber = None
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap)
                attempt += 1
                log_at = logging.WARNING if was_connected or attempt == 1 else logging.DEBUG
                log.log(log_at, "redis listener lost (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)

    async def _open_subscriber(self) -> RespConnection:
        subscriber = await RespConnection.open(
            self.url, seconds=self.confirm_timeout, on_push=self._handle
        )
        self._subscriber = subscriber
        self._refusal = None
        channels = [CONTROL_CHANNEL, *(channel_of(a) for a in self.subscriptions)]
        self._awaiting_resync = set(channels)
        # Connected once Redis confirms every channel (``_resubscribed``), not when asked.
        subscriber.write([("SUBSCRIBE", *channels)])
        return subscriber

    async def _watch(self, subscriber: RespConnection) -> None:
        """Until the connection is lost: a subscriber only reads, so a dead peer would go
        unnoticed; a connection silent for a health interval is PINGed and must answer."""
        while True:
            seen = subscriber.received
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(subscriber.lost), self.health_interval)
                return
            if subscriber.received != seen:
                continue
            subscriber.write([("PING",)])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(subscriber.lost), self.command_timeout)
                return
            if subscriber.received == seen:
                raise TimeoutError(f"no answer to PING within {self.command_timeout:g} s")

    def _handle(self, message: Any) -> None:
        if isinstance(message, Exception):
            # Redis refused a subscription (NOAUTH, a disabled user): start again later.
            self._refusal = RedisRefused(str(message))
            if self._subscriber is not None:
                self._subscriber.close()
            return
        if not isinstance(message, list) or len(message) < 3:
            return  # PING's answer ([pong, ""]) and anything else without a channel
        kind, channel, data = message[0], message[1], message[2]
        if kind == b"message":
            if channel == CONTROL_CHANNEL_BYTES:
                self.sink.control(data)
            elif channel.startswith(CHANNEL_PREFIX_BYTES):
                self.sink.deliver(_text(channel[len(CHANNEL_PREFIX_BYTES) :]), data)
        elif kind == b"subscribe":
            name = _text(channel)
            waiting = self._confirms.get(name)
            if waiting:
                future = waiting.popleft()
                if not waiting:
                    del self._confirms[name]
                if not future.done():
                    future.set_result(None)
            if self._awaiting_resync:
                self._awaiting_resync.discard(name)
                if not self._awaiting_resync:
                    self._resubscribed()

    def _resubscribed(self) -> None:
        # Also on the first connection: sockets may have attached while Redis was down.
        self._connected = True
        self.reconnects += 1
        if self.reconnects > 1:
            log.info("redis listener back; every socket re-reads the outbox")
        self.sink.resync()

    def _fail_confirms(self) -> None:
        for waiting in self._confirms.values():
            for future in waiting:
                # Released, not failed: the reconnect re-subscribes and resyncs every socket.
                if not future.done():
                    future.set_result(None)
        self._confirms.clear()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value or "")
