"""One socket's delivery: replay merged with live events, gap repair, and the slow-consumer
bound. The outbox here is a plain list: the realtime package takes replay as a function."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from realtime.connection import Connection
from realtime.hub import Hub
from realtime.protocol import CLOSE_TRY_AGAIN, JSON, MSGPACK, EventFrame


def event(seq: int) -> dict[str, Any]:
    return {"type": "deposit.succeeded", "created_at": "2026-01-01T00:00:00Z", "data": {"n": seq}}


class Outbox:
    """A list of committed events with a gate, so a test can publish during the read."""

    def __init__(self, upto: int) -> None:
        self.rows = [(seq, event(seq)) for seq in range(1, upto + 1)]
        self.gate = asyncio.Event()
        self.gate.set()
        self.reads = 0

    def commit(self, seq: int) -> EventFrame:
        self.rows.append((seq, event(seq)))
        return EventFrame(seq, event(seq))

    async def fetch_after(self, _account: str, after: int, limit: int) -> list[Any]:
        self.reads += 1
        await self.gate.wait()
        return [row for row in self.rows if row[0] > after][:limit]


class Socket:
    def __init__(self) -> None:
        self.seqs: list[int] = []

    async def send(self, wire: str | bytes) -> None:
        frame = json.loads(wire)
        if frame["type"] == "event":
            self.seqs.append(frame["seq"])


async def until(predicate: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_live_events_during_replay_are_held_then_drained_without_gap_or_duplicate() -> None:
    """Events published while the catch-up reads the outbox (some also in the read, some
    after it, out of order) reach the socket exactly once each, in seq order."""

    async def main() -> list[int]:
        outbox = Outbox(upto=5)
        outbox.gate.clear()
        socket = Socket()
        conn = Connection("acct", "dev", JSON, socket.send, outbox.fetch_after, after=2)
        conn.start()
        await until(lambda: outbox.reads == 1)
        late = [outbox.commit(6), outbox.commit(7)]
        for frame in [late[1], EventFrame(4, event(4)), EventFrame(5, event(5)), late[0]]:
            conn.offer(frame)
        outbox.gate.set()
        await until(lambda: len(socket.seqs) >= 5)
        conn.offer(outbox.commit(8))
        conn.offer(EventFrame(8, event(8)))
        await until(lambda: len(socket.seqs) >= 6)
        await asyncio.sleep(0.05)
        conn.close(1000)
        await conn.wait()
        return socket.seqs

    assert asyncio.run(main()) == [3, 4, 5, 6, 7, 8]


def test_a_lost_publish_is_repaired_from_the_outbox() -> None:
    """A live event that overtakes a lost one is held; when the gap does not fill, the
    connection re-reads the outbox from its last sent seq and delivers both in order."""

    async def main() -> tuple[list[int], int]:
        outbox = Outbox(upto=0)
        socket = Socket()
        conn = Connection(
            "acct", "dev", JSON, socket.send, outbox.fetch_after, after=0, gap_wait=0.05
        )
        conn.start()
        await until(lambda: not conn.syncing)
        conn.offer(outbox.commit(1))
        outbox.commit(2)  # committed, its publish lost
        conn.offer(outbox.commit(3))
        await until(lambda: len(socket.seqs) >= 3)
        conn.close(1000)
        await conn.wait()
        return socket.seqs, outbox.reads

    seqs, reads = asyncio.run(main())
    assert seqs == [1, 2, 3]
    assert reads == 2


def test_slow_consumer_is_closed_with_1013_and_never_delays_the_fast_one() -> None:
    """A socket whose writes never complete is closed with 1013 once its queue bound is
    reached; another socket of the same account gets every event; nothing grows past the
    bound."""

    async def main() -> tuple[Connection, Connection, Socket]:
        hub = Hub("memory://", queue_limit=8)
        await hub.start()
        outbox = Outbox(upto=0)
        fast = Socket()
        stuck = asyncio.Event()

        async def never(_wire: str | bytes) -> None:
            await stuck.wait()

        slow_conn = Connection(
            "acct", "slow", MSGPACK, never, outbox.fetch_after, after=0, queue_limit=8
        )
        fast_conn = Connection(
            "acct", "fast", JSON, fast.send, outbox.fetch_after, after=0, queue_limit=8
        )
        async with hub.attach(slow_conn), hub.attach(fast_conn):
            slow_conn.start()
            fast_conn.start()
            await until(lambda: not slow_conn.syncing and not fast_conn.syncing)
            for seq in range(1, 101):
                outbox.commit(seq)
                await hub.publish("acct", seq, event(seq))
                assert slow_conn.queued <= 8
                await asyncio.sleep(0)
            await until(lambda: len(fast.seqs) == 100)
            fast_conn.close(1000)
        await slow_conn.wait()
        await fast_conn.wait()
        await hub.stop()
        return slow_conn, fast_conn, fast

    slow_conn, _fast_conn, fast = asyncio.run(main())
    assert slow_conn.close_code == CLOSE_TRY_AGAIN
    assert fast.seqs == list(range(1, 101))
