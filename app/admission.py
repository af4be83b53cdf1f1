"""Bounded admission of the sale's writes (a code issued, a payment): a process that cannot
start one within its latency budget answers 503 ``unavailable`` with ``Retry-After`` at once,
instead of letting it queue for seconds behind the database's writers.

A fixed number of slots is held for the whole unit of work (token lookup, the write, its
commit). A request that finds no free slot waits in line on the event loop, where the wait is
known and bounded, not in the driver's pool or the worker threads.

The budget bounds what a request waits in this process besides its own work: the event
loop's lag, which it waited before reaching the gate and its frames will wait again to be
sent, and the line ahead of it (its length over the slots, times the recent time a slot is
held: Little's law). A request whose wait would not fit is refused at once, and one whose wait
in line runs out what the budget leaves is refused then. Counting the line alone let the loop
run a whole budget late before anyone was refused, and an admitted payment then paid that lag
twice on top of its wait (docs/BENCHMARKS.md, "Overload"). The unit's own time is not counted:
a slow machine that is not overloaded refuses nobody. Either way nothing was started, so a
retry with the same ``Idempotency-Key`` is safe and runs exactly once.
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
        """Measure, for as long as the process serves, how late the event loop runs a timer:
        every request waits that long in the loop before it reaches a slot, and its frames
        as long again after. The loop itself is a line, and ``slot`` counts it."""
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

    def allowed_wait(self) -> float:
        """What the budget leaves for waiting in line once the loop's lag, paid on the way in
        and again by the frames on the way out, is counted."""
        return self.budget - 2 * self.lag

    def refuses_now(self) -> bool:
        """Whether ``slot`` would refuse a request arriving now without letting it wait. The
        guard asks before routing (app.guard), so that under overload a refusal
        costs the HTTP exchange and little else: at three times saturation most requests
        are refused, and what each costs is taken from the payments admitted."""
        if self._free == self.slots:
            # A lone request on a stalled machine (no unit running) is let in.
            return False
        allowed = self.allowed_wait()
        return allowed < 0 or self.expected_wait() > allowed

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.refuses_now():
            raise refusal()
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
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._line.append(waiter)
        timer = loop.call_later(self.allowed_wait(), _expire, waiter)
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


def refusal() -> Unavailable:
    return Unavailable(
        "the server is busy; retry with the same Idempotency-Key", retry_after=RETRY_AFTER
    )


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(refusal())
