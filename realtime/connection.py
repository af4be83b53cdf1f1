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
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from realtime.protocol import CLOSE_TRY_AGAIN, EventFrame, Wire

log = logging.getLogger("paycode.ws")

# (account_id, after, limit) -> up to `limit` (seq, event) with seq > after, oldest first.
FetchAfter = Callable[[str, int, int], Awaitable[list[tuple[int, dict[str, Any]]]]]
Send = Callable[[Wire], Awaitable[None]]
# Told the `created_at` of each live event once its frame is written (push latency metric).
OnPush = Callable[[Any], None]

REPLAY_PAGE = 200
GAP_WAIT = 0.25


class Connection:
    """Delivery to one socket. `offer` is called by the hub and never blocks: a socket whose
    queue is full is closed with 1013 instead of slowing anyone else down."""

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
        self._send = send
        self._fetch_after = fetch_after
        self._gap_wait = gap_wait
        self._on_push = on_push
        # (frame, created_at of a live event or None for replies)
        self._queue: deque[tuple[Wire, Any]] = deque()
        self._held: dict[int, EventFrame] = {}
        self._syncing = True
        self._resync = True
        self._wake = asyncio.Event()
        self._gap_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def syncing(self) -> bool:
        return self._syncing

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._pump(), name=f"ws-pump-{self.device_id}")
        return self._task

    def offer(self, frame: EventFrame) -> None:
        """A live event of this account, possibly a duplicate or out of order."""
        if self.close_code is not None or frame.seq <= self.last_sent:
            return
        if self._syncing or frame.seq != self.last_sent + 1:
            self._hold(frame)
            return
        self._push(frame)
        self._release_held()

    def send_control(self, frame: Wire) -> None:
        """A reply to the client (pong, error), in the same queue and under the same bound."""
        if self.close_code is None:
            self._enqueue(frame)

    def request_resync(self) -> None:
        """Re-read the outbox from the last sent `seq` (after a broker outage or a gap)."""
        if self.close_code is None:
            self._syncing = True
            self._resync = True
            self._wake.set()

    def close(self, code: int, reason: str = "") -> None:
        """Stop delivering; the owner of the socket closes it with `code`."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        self._queue.clear()
        self._held.clear()
        self._cancel_gap_timer()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._wake.set()

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _hold(self, frame: EventFrame) -> None:
        if len(self._held) >= self.queue_limit:
            # Everything held was committed before it arrived, so a fresh outbox read
            # finds it: drop the buffer rather than grow it.
            self._held.clear()
            self.request_resync()
            return
        self._held[frame.seq] = frame
        if not self._syncing:
            self._arm_gap_timer()

    def _push(self, frame: EventFrame) -> None:
        if self._enqueue(frame.wire(self.fmt), frame.event.get("created_at")):
            self.last_sent = frame.seq

    def _enqueue(self, wire: Wire, created_at: Any = None) -> bool:
        if len(self._queue) >= self.queue_limit:
            self.close(CLOSE_TRY_AGAIN, "too slow: send queue full; reconnect with after")
            return False
        self._queue.append((wire, created_at))
        self._wake.set()
        return True

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
        if held and self.close_code is None:
            self._arm_gap_timer()
        else:
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

    async def _pump(self) -> None:
        try:
            while self.close_code is None:
                if self._queue:
                    wire, created_at = self._queue.popleft()
                    await self._send(wire)
                    if created_at is not None and self._on_push is not None:
                        self._on_push(created_at)
                elif self._resync:
                    self._resync = False
                    await self._catch_up()
                else:
                    self._wake.clear()
                    await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
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
