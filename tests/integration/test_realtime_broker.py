"""The Redis broker against a real redis-server of the test's own: one channel per account,
subscribed while a local socket needs it, and a listener that survives Redis going away."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis

from realtime.brokers.redis import CHANNEL_PREFIX, CONTROL_CHANNEL, RedisBroker, backoff_delay
from tests.cluster import RedisServer
from tests.services import unavailable


class Sink:
    def __init__(self) -> None:
        self.delivered: list[tuple[str, bytes]] = []
        self.controls: list[bytes] = []
        self.resyncs = 0

    def deliver(self, account_id: str, payload: bytes) -> None:
        self.delivered.append((account_id, payload))

    def control(self, payload: bytes) -> None:
        self.controls.append(payload)

    def resync(self) -> None:
        self.resyncs += 1


async def until(predicate: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def channels(server: RedisServer) -> set[str]:
    client = redis.Redis(port=server.port)
    return {c.decode() for c in client.pubsub_channels()}


def test_per_account_channels_and_recovery_after_redis_restarts() -> None:
    """Subscribing an account opens exactly its channel (plus the control channel); a
    publish reaches the subscriber; unsubscribing closes the channel; after Redis restarts
    the listener reconnects, re-subscribes and asks for a resync."""
    if not RedisServer.available():
        unavailable("redis-server is not installed")
    server = RedisServer()
    server.start()

    async def main() -> None:
        sink = Sink()
        broker = RedisBroker(server.url, sink, backoff_cap=0.2)
        await broker.connect()
        await until(lambda: broker.connected and sink.resyncs == 1)
        await broker.subscribe("acct-1")
        assert channels(server) == {CONTROL_CHANNEL, f"{CHANNEL_PREFIX}acct-1"}
        await broker.publish([("acct-1", b"one"), ("acct-2", b"nobody listens")])
        await broker.publish_control(b"revoke")
        await until(lambda: sink.delivered == [("acct-1", b"one")] and sink.controls == [b"revoke"])
        await broker.unsubscribe("acct-1")
        await broker.subscribe("acct-3")
        await until(lambda: channels(server) == {CONTROL_CHANNEL, f"{CHANNEL_PREFIX}acct-3"})

        server.stop()
        await until(lambda: not broker.connected)
        await asyncio.to_thread(server.start)
        await until(lambda: broker.connected and sink.resyncs == 2)
        assert channels(server) == {CONTROL_CHANNEL, f"{CHANNEL_PREFIX}acct-3"}
        await broker.publish([("acct-3", b"after")])
        await until(lambda: ("acct-3", b"after") in sink.delivered)
        await broker.disconnect()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_backoff_is_capped_and_jittered() -> None:
    """Reconnect delays never exceed the cap and are spread out rather than identical."""
    delays = [backoff_delay(attempt, 0.05, 2.0) for attempt in range(40)]
    assert all(0 <= d <= 2.0 for d in delays)
    assert len({round(d, 6) for d in delays[10:]}) > 5
