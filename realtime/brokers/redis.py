"""Redis pub/sub broker: one channel per account, plus one control channel.

An instance subscribes to an account's channel while it holds a socket of that account, so
Redis sends each instance only what it will deliver. One pub/sub connection carries every
subscription; a listener task reads it and, when Redis drops, reconnects with capped,
jittered exponential backoff, re-subscribes everything and tells the sink to resync, because
messages published while it was away are gone (the outbox still has them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from realtime.brokers.base import Broker, BrokerSink

log = logging.getLogger("paycode.broker")

CHANNEL_PREFIX = "paycode:acct:"
CONTROL_CHANNEL = "paycode:control"


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
    ) -> None:
        super().__init__(url, sink)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.confirm_timeout = confirm_timeout
        self._client: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._connected = False
        self._confirms: dict[str, deque[asyncio.Future[None]]] = {}
        self._awaiting_resync: set[str] = set()
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        # Pooled connections die with a Redis restart; retry once on a fresh one. A retried
        # publish may arrive twice, which sockets drop by seq.
        self._client = aioredis.from_url(
            self.url,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=10,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._listener = asyncio.create_task(self._listen(), name="paycode-redis-listener")

    async def disconnect(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._drop_pubsub()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self.subscriptions.clear()

    async def subscribe(self, account_id: str) -> None:
        self.subscriptions.add(account_id)
        pubsub = self._pubsub
        if not self._connected or pubsub is None:
            return  # the listener subscribes everything when it (re)connects
        channel = channel_of(account_id)
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirms.setdefault(channel, deque()).append(confirmed)
        try:
            await pubsub.subscribe(channel)
            await asyncio.wait_for(asyncio.shield(confirmed), self.confirm_timeout)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            # The listener will notice, reconnect, re-subscribe and resync every socket.
            log.warning("subscribe %s not confirmed: %s", channel, exc.__class__.__name__)

    async def unsubscribe(self, account_id: str) -> None:
        self.subscriptions.discard(account_id)
        pubsub = self._pubsub
        if self._connected and pubsub is not None:
            with contextlib.suppress(aioredis.RedisError, OSError):
                await pubsub.unsubscribe(channel_of(account_id))

    async def publish(self, messages: Iterable[tuple[str, bytes]]) -> None:
        client = self._client
        if client is None or not self._connected:
            raise BrokerUnavailable("redis is not connected")
        async with client.pipeline(transaction=False) as pipe:
            for account_id, payload in messages:
                pipe.publish(channel_of(account_id), payload)
            await pipe.execute()

    async def publish_control(self, payload: bytes) -> None:
        client = self._client
        if client is None or not self._connected:
            raise BrokerUnavailable("redis is not connected")
        await client.publish(CONTROL_CHANNEL, payload)

    async def _listen(self) -> None:
        attempt = 0
        while True:
            try:
                await self._open_pubsub()
                attempt = 0
                while True:
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=False, timeout=1.0
                    )
                    if message is not None:
                        self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                was_connected = self._connected
                self._connected = False
                self._fail_confirms()
                await self._drop_pubsub()
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap)
                attempt += 1
                log_at = logging.WARNING if was_connected or attempt == 1 else logging.DEBUG
                log.log(log_at, "redis listener lost (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)

    async def _open_pubsub(self) -> None:
        assert self._client is not None
        pubsub = self._client.pubsub()
        channels = [CONTROL_CHANNEL, *(channel_of(a) for a in self.subscriptions)]
        self._awaiting_resync = set(channels)
        self._pubsub = pubsub
        await pubsub.subscribe(*channels)
        self._connected = True

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = _text(message.get("channel"))
        if kind == "message":
            if channel == CONTROL_CHANNEL:
                self.sink.control(message["data"])
            elif channel.startswith(CHANNEL_PREFIX):
                self.sink.deliver(channel[len(CHANNEL_PREFIX) :], message["data"])
        elif kind == "subscribe":
            waiting = self._confirms.get(channel)
            if waiting:
                future = waiting.popleft()
                if not waiting:
                    del self._confirms[channel]
                if not future.done():
                    future.set_result(None)
            if self._awaiting_resync:
                self._awaiting_resync.discard(channel)
                if not self._awaiting_resync:
                    self._resubscribed()

    def _resubscribed(self) -> None:
        # Also on the first connection: sockets may have attached while Redis was down.
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

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value or "")
