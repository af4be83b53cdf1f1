"""The hub: refcounted broker subscriptions released however a handler ends, the broker picked
by URL scheme, delivery between instances over a shared bus, and device revocation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from realtime.brokers import make_broker
from realtime.brokers.memory import MemoryBroker
from realtime.connection import Connection
from realtime.hub import Hub
from realtime.protocol import CLOSE_UNAUTHORIZED, JSON, decode, negotiate
from tests.unit.test_realtime_connection import Socket, event, until


async def no_history(_account: str, _after: int, _limit: int) -> list[Any]:
    return []


def conn(account: str, device: str, socket: Socket | None = None) -> Connection:
    send = (socket or Socket()).send
    return Connection(account, device, JSON, send, no_history, after=0)


def test_subscription_is_dropped_when_the_last_socket_leaves_even_if_a_handler_raises() -> None:
    """Two sockets of one account share one broker subscription; it stays while one is left
    and is dropped when the last leaves, also when the handler raises or is cancelled."""

    async def main() -> None:
        hub = Hub("memory://")
        await hub.start()
        with pytest.raises(RuntimeError):
            async with hub.attach(conn("a1", "d1")):
                with pytest.raises(ValueError):
                    async with hub.attach(conn("a1", "d2")):
                        assert hub.broker.subscriptions == {"a1"}
                        raise ValueError("handler failed")
                assert hub.broker.subscriptions == {"a1"}
                raise RuntimeError("handler failed")
        assert hub.broker.subscriptions == set()
        assert hub.connections("a1") == []

        entered = asyncio.Event()

        async def handler() -> None:
            async with hub.attach(conn("a2", "d3")):
                entered.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(handler())
        await entered.wait()
        assert hub.broker.subscriptions == {"a2"}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert hub.broker.subscriptions == set()
        await hub.stop()

    asyncio.run(main())


def test_broker_is_picked_by_url_scheme() -> None:
    """memory:// needs nothing else; redis:// and rediss:// pick the Redis backend; anything
    else is refused with a clear message."""
    hub = Hub("memory://")
    assert isinstance(make_broker("memory://", hub), MemoryBroker)
    from realtime.brokers.redis import RedisBroker

    assert isinstance(make_broker("redis://:secret@127.0.0.1:6379/0", hub), RedisBroker)
    assert isinstance(make_broker("rediss://127.0.0.1:6380/0", hub), RedisBroker)
    with pytest.raises(ValueError, match="unsupported broker"):
        make_broker("kafka://x", hub)


def test_events_cross_instances_once_and_revocation_closes_remote_sockets() -> None:
    """Two hubs on one bus stand for two servers: an event published on A reaches B's sockets
    once (A's own echo is dropped); revoking a device on A closes its socket on B with 4401."""

    async def main() -> tuple[list[int], list[int], int | None]:
        a, b = Hub("memory://bus-cross"), Hub("memory://bus-cross")
        await a.start()
        await b.start()
        on_a, on_b = Socket(), Socket()
        ca, cb = conn("acct", "dev-a", on_a), conn("acct", "dev-b", on_b)
        async with a.attach(ca), b.attach(cb):
            ca.start()
            cb.start()
            await until(lambda: not ca.syncing and not cb.syncing)
            for seq in (1, 2, 3):
                await a.publish("acct", seq, event(seq))
            await until(lambda: len(on_a.seqs) == 3 and len(on_b.seqs) == 3)
            await a.revoke_device("acct", "dev-b")
            await until(lambda: cb.close_code is not None)
            ca.close(1000)
        await a.stop()
        await b.stop()
        return on_a.seqs, on_b.seqs, cb.close_code

    seqs_a, seqs_b, code = asyncio.run(main())
    assert seqs_a == [1, 2, 3]
    assert seqs_b == [1, 2, 3]
    assert code == CLOSE_UNAUTHORIZED


def test_frames_are_encoded_once_per_format_and_shared() -> None:
    """Every socket of one format gets the very same encoded object, and the JSON subprotocol
    is the default when the client asks for none."""

    async def main() -> list[Any]:
        hub = Hub("memory://")
        await hub.start()
        wires: list[Any] = []

        async def capture(wire: str | bytes) -> None:
            wires.append(wire)

        conns = [Connection("acct", f"d{i}", JSON, capture, no_history, after=0) for i in range(3)]
        for c in conns:
            await hub._acquire("acct")
            hub._sockets.setdefault("acct", set()).add(c)
            c.start()
        await until(lambda: all(not c.syncing for c in conns))
        await hub.publish("acct", 1, event(1))
        await until(lambda: len(wires) == 3)
        for c in conns:
            c.close(1000)
        await hub.stop()
        return wires

    wires = asyncio.run(main())
    assert wires[0] is wires[1] is wires[2]
    assert json.loads(wires[0])["seq"] == 1
    assert negotiate([]) == JSON
    assert negotiate(["x", "paycode.v1.msgpack"]) == "paycode.v1.msgpack"
    assert decode(JSON, '{"type": "ping"}') == {"type": "ping"}
