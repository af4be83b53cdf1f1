"""One socket's delivery: a bounded send queue and the merge of replay with live events.

The hub subscribes the account BEFORE the connection catches up, so a live event is either
committed before the catch-up's outbox read (and read there) or published after the
subscription (and held here); draining the held events after the read, skipping every `seq`
already sent, leaves nothing missing and nothing twice. The same mechanism repairs a gap
(an event whose publish was lost or overtaken): the connection re-reads the outbox from its
last sent `seq`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from realtime.protocol import CLOSE_TRY_AGAIN, EventFrame, Wire

log = logging.getLogger("paycode.ws")

# (account_id, after, limit) -> up to `limit` (seq, event) with seq > after, oldest first.
FetchAfter = Callable[[str, int, int], Awaitable[list[tuple[int, dict[str, Any]]]]]
# Writes one frame. A coroutine, not any awaitable: a write that needs no wait is run to its
# end in the caller's turn, without a task or a coroutine of the connection's own.
Send = Callable[[Wire], Coroutine[Any, Any, None]]
# Told the commit time of each live event (epoch seconds, `EventFrame.committed`) once its
# frame is written (push latency metric).
OnPush = Callable[[Any], None]

# A write that had to wait: its coroutine, what it waits on, the event's commit time.
_Pending = tuple[Coroutine[Any, Any, None], Any, Any]

REPLAY_PAGE = 200
GAP_WAIT = 0.25


class Connection:
    """Delivery to one socket. `offer` is called by the hub and never blocks: a socket whose
    queue is full is closed with 1013 instead of slowing anyone else down.

    An idle socket costs no task here: a pump task is started when there is something to send
    or to re-read and ends once the queue is drained, and the send queue, the held events and
    the gap timer exist only while in use (thousands of idle sockets share one process)."""

    __slots__ = (
        "_draining",
        "_fetch_after",
        "_gap_timer",
        "_gap_wait",
        "_held",
        "_on_push",
        "_queue",
        "_resync",
        "_send",
        "_syncing",
        "_task",
        "account_id",
        "close_code",
        "close_reason",
        "device_id",
        "fmt",
        "last_sent",
        "owner",
        "queue_limit",
    )

    def __init__(
        self,
        account_id: str,
        device_id: str,
        fmt: str,
        send: Send,
        fetch_after: FetchAfter,
        *,
        after: int,
        queue_limit: int = 256,
        gap_wait: float = GAP_WAIT,
        on_push: OnPush | None = None,
    ) -> None:
        self.account_id = account_id
        self.device_id = device_id
        self.fmt = fmt
        self.last_sent = after
        self.queue_limit = queue_limit
        self.close_code: int | None = None
        self.close_reason = ""
        # The task that reads the socket; `close` cancels it so that it closes the socket.
        self.owner: asyncio.Task[Any] | None = None
        self._send = send
        self._fetch_after = fetch_after
        self._gap_wait = gap_wait
        self._on_push = on_push
        # (frame, created_at of a live event or None for replies)
        self._queue: deque[tuple[Wire, Any]] | None = None
        self._held: dict[int, EventFrame] | None = None
        self._syncing = True
        self._resync = True
        self._gap_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._draining = False

    @property
    def syncing(self) -> bool:
        return self._syncing

    @property
    def queued(self) -> int:
        return len(self._queue) if self._queue is not None else 0

    def start(self) -> asyncio.Task[None] | None:
        """Begin delivery with the catch-up from `after`; returns the pump task."""
        self._kick()
        return self._task

    def offer(self, frame: EventFrame) -> None:
        """A live event of this account, possibly a duplicate or out of order."""
        if self.close_code is not None or frame.seq <= self.last_sent:
            return
        if self._syncing or frame.seq != self.last_sent + 1:
            self._hold(frame)
            return
        self._push(frame)
        if self._held:
            self._release_held()
        else:
            self._cancel_gap_timer()

    def send_control(self, frame: Wire) -> None:
        """A reply to the client (pong, error), in the same queue and under the same bound."""
        if self.close_code is None:
            self._enqueue(frame)

    def request_resync(self) -> None:
        """Re-read the outbox from the last sent `seq` (after a broker outage or a gap)."""
        if self.close_code is None:
            self._syncing = True
            self._resync = True
            self._kick()

    def close(self, code: int, reason: str = "") -> None:
        """Stop delivering; the owner of the socket closes it with `code`."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        self._queue = None
        self._held = None
        self._cancel_gap_timer()
        current = asyncio.current_task()
        if self._task is not None and self._task is not current:
            self._task.cancel()
        if self.owner is not None and self.owner is not current:
            self.owner.cancel()

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _kick(self) -> None:
        if self._task is not None or self._draining or self.close_code is not None:
            return
        if self._resync:
            self._task = asyncio.create_task(self._pump())
            return
        # Queued frames are written at once, in the caller's turn of the loop: a socket write
        # seldom waits, and a task per frame and socket is most of a fan-out's own cost. A
        # send that does wait goes on in a task, so the caller is never held up by it.
        self._draining = True
        pump = self._pump()
        try:
            waiting_on = pump.send(None)
        except StopIteration:
            pass
        else:
            self._task = asyncio.create_task(_resume(pump, waiting_on))
        finally:
            self._draining = False
        if self._task is None and self._resync and self.close_code is None:
            self._task = asyncio.create_task(self._pump())

    def _hold(self, frame: EventFrame) -> None:
        held = self._held
        if held is None:
            held = self._held = {}
        if len(held) >= self.queue_limit:
            # Everything held was committed before it arrived, so a fresh outbox read
            # finds it: drop the buffer rather than grow it.
            held.clear()
            self.request_resync()
            return
        held[frame.seq] = frame
        if not self._syncing:
            self._arm_gap_timer()

    def _push(self, frame: EventFrame) -> None:
        if self._enqueue(frame.wire(self.fmt), frame.committed):
            self.last_sent = frame.seq

    def _enqueue(self, wire: Wire, created_at: Any = None) -> bool:
        queue = self._queue
        if queue is None:
            if self._task is None and not self._resync and not self._draining:
                # Nothing queued or in flight: the usual case of a live frame.
                self._write(wire, created_at)
                return True
            queue = self._queue = deque()
        elif len(queue) >= self.queue_limit:
            self.close(CLOSE_TRY_AGAIN, "too slow: send queue full; reconnect with after")
            return False
        queue.append((wire, created_at))
        self._kick()
        return True

    def _write(self, wire: Wire, created_at: Any) -> None:
        """Write one frame now: the send's coroutine is stepped here, in the caller's turn,
        and handed to a task only if it has to wait (the transport paused by a full buffer);
        frames queued meanwhile follow it in that task."""
        self._draining = True
        try:
            send = self._send(wire)
            waiting_on = send.send(None)
        except StopIteration:
            if created_at is not None and self._on_push is not None:
                self._on_push(created_at)
            return
        except Exception as exc:
            self._failed(exc)
            return
        finally:
            self._draining = False
        self._task = asyncio.create_task(self._pump((send, waiting_on, created_at)))

    def _release_held(self) -> None:
        """Move held events that now follow `last_sent` into the queue."""
        held = self._held
        while held and self.close_code is None:
            nxt = held.pop(self.last_sent + 1, None)
            if nxt is None:
                for seq in [s for s in held if s <= self.last_sent]:
                    del held[seq]
                break
            self._push(nxt)
        if self._held and self.close_code is None:
            self._arm_gap_timer()
        else:
            self._held = None
            self._cancel_gap_timer()

    def _arm_gap_timer(self) -> None:
        if self._gap_timer is None:
            loop = asyncio.get_running_loop()
            self._gap_timer = loop.call_later(self._gap_wait, self._gap_expired)

    def _cancel_gap_timer(self) -> None:
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None

    def _gap_expired(self) -> None:
        self._gap_timer = None
        if self._held and self.close_code is None:
            self.request_resync()

    async def _pump(self, pending: _Pending | None = None) -> None:
        try:
            if pending is not None:
                # A write `_write` began that has to wait: finish it before the queue.
                send, waiting_on, created_at = pending
                await _drive(send, waiting_on)
                if created_at is not None and self._on_push is not None:
                    self._on_push(created_at)
            while self.close_code is None:
                queue = self._queue
                if queue:
                    wire, created_at = queue.popleft()
                    await self._send(wire)
                    if created_at is not None and self._on_push is not None:
                        self._on_push(created_at)
                elif self._resync:
                    if self._task is None:
                        # Drained in a caller's turn: the replay gets a task of its own.
                        break
                    self._resync = False
                    await self._catch_up()
                else:
                    # Drained: the next frame or resync starts a new pump.
                    self._queue = None
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
        finally:
            # A pump driven in a caller's turn has no task; only a task clears its own.
            task = self._task
            if task is not None and task is asyncio.current_task():
                self._task = None

    def _failed(self, exc: Exception) -> None:
        # A dead socket or an unreadable outbox: the client reconnects and replays.
        log.info("socket of %s stops: %s", self.device_id, exc.__class__.__name__)
        self.close(CLOSE_TRY_AGAIN, "delivery failed; reconnect with after")

    async def _catch_up(self) -> None:
        """Send the outbox after `last_sent`, then what was held meanwhile. The queue is empty
        here, so replayed events go straight to the socket, paced by it."""
        self._cancel_gap_timer()
        while True:
            rows = await self._fetch_after(self.account_id, self.last_sent, REPLAY_PAGE)
            for seq, event in rows:
                if seq > self.last_sent:
                    await self._send(EventFrame(seq, event).wire(self.fmt))
                    self.last_sent = seq
            if len(rows) < REPLAY_PAGE or self.close_code is not None:
                break
        if self._resync:
            # Held events were dropped while reading: read again before going live.
            return
        self._syncing = False
        self._release_held()


async def _resume(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Finish, as a task, a coroutine that was started outside one and suspended."""
    await _drive(coro, waiting_on)


@types.coroutine
def _drive(coro: Coroutine[Any, Any, None], waiting_on: Any) -> Generator[Any, Any, None]:
    # Hands what the coroutine waits on to the running task, and the task's wake-up (a value
    # or an exception such as a cancellation) back to the coroutine, as `await` would have.
    while True:
        try:
            value = yield waiting_on
        except BaseException as exc:
            try:
                waiting_on = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waiting_on = coro.send(value)
            except StopIteration:
                return
