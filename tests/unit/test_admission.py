"""The admission gate on its own: who waits, who is refused at once, and that a slot is
never lost to a request that gives up."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.admission import Admission
from models.errors import Unavailable


async def _hold(gate: Admission, entered: list[int], n: int, release: asyncio.Event) -> None:
    async with gate.slot():
        entered.append(n)
        await release.wait()


def test_a_slot_passes_to_the_line_in_order_and_a_long_line_is_refused_at_once() -> None:
    """Two slots: the first two enter, the next ones wait in order while the line is short,
    and a newcomer facing a line longer than the budget is refused without waiting."""

    async def scenario() -> None:
        gate = Admission(slots=2, budget=10.0)
        release = asyncio.Event()
        entered: list[int] = []
        tasks = [asyncio.create_task(_hold(gate, entered, n, release)) for n in range(4)]
        await asyncio.sleep(0)
        assert entered == [0, 1]
        assert gate.waiting == 2
        gate.budget = gate.expected_wait() / 2
        with pytest.raises(Unavailable) as refused:
            async with gate.slot():
                raise AssertionError("admitted past the budget")
        assert refused.value.retry_after == 1
        gate.budget = 10.0
        release.set()
        await asyncio.gather(*tasks)
        assert entered == [0, 1, 2, 3]
        assert gate.expected_wait() == 0.0

    asyncio.run(scenario())


def test_a_wait_past_the_budget_is_refused_and_a_cancelled_waiter_loses_no_slot() -> None:
    """A waiter whose budget runs out is refused; one cancelled in line (the client left)
    leaves the slot count whole, so later requests still enter."""

    async def scenario() -> None:
        gate = Admission(slots=1, budget=0.05)
        release = asyncio.Event()
        entered: list[int] = []
        holder = asyncio.create_task(_hold(gate, entered, 0, release))
        await asyncio.sleep(0)
        with pytest.raises(Unavailable):
            async with gate.slot():
                raise AssertionError("admitted while the slot was held")
        gate.budget = 10.0
        quitter = asyncio.create_task(_hold(gate, entered, 1, release))
        await asyncio.sleep(0)
        quitter.cancel()
        release.set()
        await holder
        with pytest.raises(asyncio.CancelledError):
            await quitter
        await _hold(gate, entered, 2, release)
        assert entered == [0, 2]
        assert gate.expected_wait() == 0.0

    asyncio.run(scenario())


def test_a_loop_running_later_than_the_budget_refuses_at_once() -> None:
    """When the watched event loop ran a timer later than the budget (it was blocked) while
    units are running, a request is refused even with slots free; once the loop is on time
    again it enters."""

    async def scenario() -> None:
        gate = Admission(slots=4, budget=0.05)
        watch = asyncio.create_task(gate.watch_loop(period=0.01))
        release = asyncio.Event()
        busy = asyncio.create_task(_hold(gate, [], 0, release))
        await asyncio.sleep(0.03)
        loop = asyncio.get_running_loop()
        # One stall of the loop refuses nobody.
        loop.call_soon(time.sleep, 0.2)
        await asyncio.sleep(0.02)
        assert gate.lag <= gate.budget
        async with gate.slot():
            pass
        # Work that holds the loop again and again: it is behind.
        stalls = iter(range(4))

        def stall() -> None:
            time.sleep(0.12)
            if next(stalls, None) is not None:
                loop.call_soon(stall)

        loop.call_soon(stall)
        await asyncio.sleep(0.01)
        assert gate.lag > gate.budget
        with pytest.raises(Unavailable):
            async with gate.slot():
                raise AssertionError("admitted while the loop was behind")
        for _ in range(200):
            if gate.allowed_wait() >= 0:
                break
            await asyncio.sleep(0.01)
        async with gate.slot():
            pass
        release.set()
        await busy
        watch.cancel()

    asyncio.run(scenario())


def test_the_loops_lag_counts_twice_against_the_budget() -> None:
    """A request waits the loop's lag before it reaches the gate and its frames wait it again:
    a loop late by less than the budget still refuses when twice its lag does not fit, before
    routing as well as at the slot, and admits again when it does."""

    async def scenario() -> None:
        gate = Admission(slots=4, budget=0.1)
        release = asyncio.Event()
        busy = asyncio.create_task(_hold(gate, [], 0, release))
        await asyncio.sleep(0)
        gate.lag = 0.06  # 2 x 60 ms: past the 100 ms budget
        assert gate.refuses_now()
        with pytest.raises(Unavailable):
            async with gate.slot():
                raise AssertionError("admitted past the budget")
        gate.lag = 0.04  # 80 ms
        assert not gate.refuses_now()
        async with gate.slot():
            pass
        release.set()
        await busy
        # Idle (no unit running), even a late loop lets a request in.
        gate.lag = 1.0
        assert not gate.refuses_now()

    asyncio.run(scenario())
