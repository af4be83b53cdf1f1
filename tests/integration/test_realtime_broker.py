"""The Redis broker against a real redis-server of the test's own: one channel per account,
subscribed while a local socket needs it, and a listener that survives Redis going away."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
import redis

from realtime.brokers.redis import (
    CHANNEL_PREFIX,
    CONTROL_CHANNEL,
    BrokerUnavailable,
    RedisBroker,
    backoff_delay,
)
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


def test_a_password_in_the_url_authenticates_both_connections() -> None:
    """The URL's password (alone, or with an ACL user) is sent before anything else on the
    subscriber's and the publisher's connections; a wrong one never counts as connected."""
    if not RedisServer.available():
        unavailable("redis-server is not installed")
    server = RedisServer()
    server.start()
    admin = redis.Redis(port=server.port)
    admin.execute_command("ACL", "SETUSER", "till", "on", ">t!ll pw", "~*", "&*", "+@all")
    admin.config_set("requirepass", "p@ss word")
    base = f"127.0.0.1:{server.port}/0"

    async def delivers(url: str) -> None:
        sink = Sink()
        broker = RedisBroker(url, sink, backoff_cap=0.2)
        await broker.connect()
        await until(lambda: broker.connected and sink.resyncs == 1)
        await broker.subscribe("acct-1")
        await broker.publish([("acct-1", b"paid")])
        await until(lambda: sink.delivered == [("acct-1", b"paid")])
        await broker.disconnect()

    async def refused(url: str) -> None:
        sink = Sink()
        broker = RedisBroker(url, sink, backoff_cap=0.1)
        await broker.connect()
        await asyncio.sleep(0.5)
        assert not broker.connected and sink.resyncs == 0
        with pytest.raises(BrokerUnavailable):
            await broker.publish([("acct-1", b"paid")])
        await broker.disconnect()

    try:
        asyncio.run(delivers(f"redis://:p%40ss%20word@{base}"))
        asyncio.run(delivers(f"redis://till:t%21ll%20pw@{base}"))
        asyncio.run(refused(f"redis://:wrong@{base}"))
        asyncio.run(refused(f"redis://{base}"))
    finally:
        server.stop()


def test_a_redis_that_stops_answering_is_left_and_joined_again() -> None:
    """A subscriber only reads, so a Redis that hangs with its socket open would leave it
    waiting for ever: a silent connection is PINGed, and one that does not answer is dropped
    and made again. A publish meanwhile fails within its bounded retries."""
    if not RedisServer.available():
        unavailable("redis-server is not installed")
    server = RedisServer()
    server.start()
    assert server.process is not None
    pid = server.process.pid

    async def main() -> None:
        sink = Sink()
        broker = RedisBroker(
            server.url, sink, backoff_cap=0.2, health_interval=0.3, command_timeout=0.3
        )
        await broker.connect()
        await until(lambda: broker.connected and sink.resyncs == 1)
        await broker.subscribe("acct-1")
        os.kill(pid, signal.SIGSTOP)
        try:
            await until(lambda: not broker.connected, within=5)
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable):
                await broker.publish([("acct-1", b"lost")])
            assert time.monotonic() - started < 2
        finally:
            os.kill(pid, signal.SIGCONT)
        await until(lambda: broker.connected and sink.resyncs == 2)
        await broker.publish([("acct-1", b"after")])
        await until(lambda: ("acct-1", b"after") in sink.delivered)
        assert ("acct-1", b"lost") not in sink.delivered
        await broker.disconnect()

    try:
        asyncio.run(main())
    finally:
        os.kill(pid, signal.SIGCONT)
        server.stop()
