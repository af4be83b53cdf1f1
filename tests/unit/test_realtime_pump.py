"""The per-socket pump: no task while a socket is idle, frames written in the publisher's
turn, and a send that has to wait finished by a task, in order, without loss."""

from __future__ import annotations

import asyncio
import json

from realtime.connection import Connection
from realtime.protocol import JSON, EventFrame
from tests.unit.test_realtime_connection import Outbox, Socket, event, until


def test_idle_welcomed_sockets_hold_no_task_and_frames_still_arrive() -> None:
    """After the catch-up, a connection with nothing to send runs no task of its own; a live
    event then reaches its socket at once, within the publisher's call."""

    async def main() -> None:
        outbox = Outbox(upto=3)
        before = len(asyncio.all_tasks())
        sockets = [Socket() for _ in range(50)]
        conns = [
            Connection("acct", f"d{i}", JSON, s.send, outbox.fetch_after, after=0)
            for i, s in enumerate(sockets)
        ]
        for conn in conns:
            conn.start()
        await until(lambda: all(not c.syncing for c in conns))
        await until(lambda: len(asyncio.all_tasks()) == before)
        assert all(s.seqs == [1, 2, 3] for s in sockets)
        frame = outbox.commit(4)
        for conn in conns:
            conn.offer(frame)
        assert all(s.seqs == [1, 2, 3, 4] for s in sockets)
        assert len(asyncio.all_tasks()) == before
        for conn in conns:
            conn.close(1000)
            await conn.wait()

    asyncio.run(main())


def test_a_send_that_waits_is_finished_by_a_task_in_order() -> None:
    """A socket whose writes sometimes wait (on a future's result, or a bare yield) still gets
    every frame once, in seq order, and the publisher is not held up meanwhile."""

    async def main() -> list[int]:
        outbox = Outbox(upto=0)
        seqs: list[int] = []
        gates: list[asyncio.Future[str]] = []

        async def send(wire: str | bytes) -> None:
            frame = json.loads(wire)
            if frame["seq"] % 2:
                gate = asyncio.get_running_loop().create_future()
                gates.append(gate)
                assert await gate == "open"
            else:
                await asyncio.sleep(0)
            seqs.append(frame["seq"])

        conn = Connection("acct", "dev", JSON, send, outbox.fetch_after, after=0)
        conn.start()
        await until(lambda: not conn.syncing)
        for seq in range(1, 7):
            conn.offer(outbox.commit(seq))
        assert seqs == []
        conn.offer(EventFrame(7, event(7)))
        while len(seqs) < 7:
            await until(lambda: bool(gates) or len(seqs) == 7)
            if gates:
                gates.pop().set_result("open")
        conn.close(1000)
        await conn.wait()
        return seqs

    assert asyncio.run(main()) == [1, 2, 3, 4, 5, 6, 7]
