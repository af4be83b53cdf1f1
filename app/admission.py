"""Bounded admission of the sale's writes (a code issued, a payment): a process that cannot
start one within its latency budget answers 503 ``unavailable`` with ``Retry-After`` at once,
instead of letting it queue for seconds behind the database's writers.

A fixed number of slots is held for the whole unit of work (token lookup, the write, its
commit). A request that finds no free slot waits in line on the event loop, where the wait is
known and bounded, not in the driver's pool or the worker threads. It is refused at once when
the line ahead of it would take longer than the budget to clear (Little's law: the line's
length over the slots, times the recent time a slot is held), and refused when its own wait
runs out the budget. When the event loop itself runs later than the budget (every request
waits in it before reaching the gate), new ones are refused at once until it catches up.
Either way nothing was started, so a retry with the same ``Idempotency-Key`` is safe and runs
exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from models.errors import Unavailable

# How much each finished unit moves the estimate of the time a slot is held.
_WEIGHT = 0.1
# The estimate before any unit has finished: a sale's write on a quiet machine.
_PRIOR = 0.005
RETRY_AFTER = 1
# How often the event loop's lag is sampled.
LAG_PERIOD = 0.02


class Admission:
    """The gate of one process; every method runs on its event loop."""

    __slots__ = ("_free", "_held", "_line", "budget", "lag", "slots")

    def __init__(self, slots: int, budget: float) -> None:
        self.slots = max(1, slots)
        self.budget = budget
        self._free = self.slots
        self._line: deque[asyncio.Future[None]] = deque()
        self._held = _PRIOR
        # How late the event loop ran its last timer (``watch_loop``).
        self.lag = 0.0

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._line if not waiter.done())

    def expected_wait(self) -> float:
        """How long a newcomer would wait for a slot, from the line ahead of it."""
        if self._free:
            return 0.0
        return (len(self._line) + 1) / self.slots * self._held

    async def watch_loop(self, period: float = LAG_PERIOD) -> None:
        """Measure, for as long as the process serves, how late the event loop runs a timer.
        When it is later than the budget, every request already waits that long in the loop
        before any slot is free or not: the loop itself is the line, and ``slot`` refuses."""
        loop = asyncio.get_running_loop()
        previous = 0.0
        while True:
            start = loop.time()
            await asyncio.sleep(period)
            late = loop.time() - start - period
            # The lesser of the last two: a loop that is behind is late every time, while a
            # single late timer (the machine took the core away once) refuses nobody.
            self.lag = min(late, previous)
            previous = late

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.lag > self.budget and self._free < self.slots:
            # Refusing costs a fraction of a sale: the loop catches up instead of falling
            # further behind. A lone request on a stalled machine (no unit running) is let in.
            raise _refusal()
        if self._free and not self._line:
            self._free -= 1
        else:
            await self._wait()
        started = time.perf_counter()
        try:
            yield
        finally:
            self._held += _WEIGHT * (time.perf_counter() - started - self._held)
            self._release()

    async def _wait(self) -> None:
        if self.expected_wait() > self.budget:
            raise _refusal()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._line.append(waiter)
        timer = loop.call_later(self.budget, _expire, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # The client left. A slot handed over just before must not be lost with it.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release()
            raise
        finally:
            timer.cancel()
            self._drop_finished()

    def _release(self) -> None:
        # The slot passes straight to the first live waiter, so no newcomer overtakes the line.
        while self._line:
            waiter = self._line.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _drop_finished(self) -> None:
        while self._line and self._line[0].done():
            self._line.popleft()


def _refusal() -> Unavailable:
    return Unavailable(
        "the server is busy; retry with the same Idempotency-Key", retry_after=RETRY_AFTER
    )


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(_refusal())
