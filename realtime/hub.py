"""Local fan-out of account events, and refcounted broker subscriptions.

`publish` delivers to this process's sockets at once and queues the event for the broker,
which carries it to the other instances; each instance drops the echo of its own messages.
A background publisher sends the queue in batches, so a slow or dead broker never holds up
the request that committed (the outbox relay and the per-socket catch-up cover what the
broker loses).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgpack

from realtime.brokers import Broker, make_broker
from realtime.brokers.memory import MemoryBroker
from realtime.connection import Connection
from realtime.protocol import CLOSE_RESTART, CLOSE_UNAUTHORIZED, EventBody, EventFrame

log = logging.getLogger("paycode.hub")

PUBLISH_BATCH = 500

# Sockets one process holds for one device and for one account: a stolen token or a buggy
# client cannot pin unbounded memory and fan-out work. A socket past either cap is closed
# with CLOSE_TOO_MANY_SOCKETS right after its hello.
MAX_SOCKETS_PER_DEVICE = 16
MAX_SOCKETS_PER_ACCOUNT = 64
CLOSE_TOO_MANY_SOCKETS = 4429


class TooManySockets(Exception):
    """The device or the account already holds its cap of sockets on this process."""

    def __init__(self, scope: str, limit: int) -> None:
        self.reason = f"too many sockets for this {scope} (at most {limit}); close one first"
        super().__init__(self.reason)


class Hub:
    """Every socket of this process, by account, and the broker that links the instances."""

    def __init__(
        self,
        broker_url: str = "memory://",
        *,
        queue_limit: int = 256,
        publish_backlog: int = 10_000,
        hooks: Mapping[str, Callable[..., None]] | None = None,
        max_per_device: int = MAX_SOCKETS_PER_DEVICE,
        max_per_account: int = MAX_SOCKETS_PER_ACCOUNT,
    ) -> None:
        self.instance_id = uuid.uuid4().hex
        # How every event this hub publishes begins ([instance_id, seq, event] in msgpack): its
        # own echo from the broker is recognised by these bytes, without unpacking the event.
        self._echo_head = b"\x93" + msgpack.packb(self.instance_id)
        self.max_per_device = max_per_device
        self.max_per_account = max_per_account
        # Metrics callbacks handed in by the app (frame_pushed, broker_reconnected, relay_lag).
        self.hooks: Mapping[str, Callable[..., None]] = hooks or {}
        self.queue_limit = queue_limit
        self.publish_backlog = publish_backlog
        self.broker: Broker = make_broker(broker_url, self)
        # A private memory bus (``memory://`` with no name) carries this hub's messages back to
        # this hub alone, which drops them as its own echo: publishing to it is pure cost.
        self._publishes = not (
            isinstance(self.broker, MemoryBroker) and not broker_url.split("://", 1)[1].strip("/")
        )
        self._sockets: dict[str, set[Connection]] = {}
        self._refs: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._outgoing: deque[tuple[str, bytes]] = deque()
        self._outgoing_ready = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._last_body: EventBody | None = None
        self.dropped_publishes = 0
        self.resyncs = 0
        # Called with a device id whenever this process learns the device was revoked.
        self.revocation_listeners: list[Callable[[str], None]] = []

    async def start(self) -> None:
        await self.broker.connect()
        self._publisher = asyncio.create_task(self._publish_loop(), name="paycode-publisher")

    async def stop(self) -> None:
        for conn in [c for conns in self._sockets.values() for c in conns]:
            conn.close(CLOSE_RESTART, "server restarting; reconnect with after")
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
        await self.broker.disconnect()

    # -- sockets -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def attach(self, conn: Connection) -> AsyncIterator[Connection]:
        """Register a socket and hold its account's subscription while the block runs; the
        subscription is released when the last local socket of the account leaves, however
        the block ends. Raises TooManySockets, registering nothing, past a cap."""
        await self.join(conn)
        try:
            yield conn
        finally:
            await self.leave(conn)

    async def join(self, conn: Connection) -> None:
        """`attach` without the context manager, for a caller that pairs it with `leave` in
        its own `finally` (a suspended generator per socket is memory an idle socket need not
        hold). Raises TooManySockets, registering nothing, past a cap."""
        account_id = conn.account_id
        # Checked and registered with no await between, so racing sockets cannot both pass.
        self.check_room(conn)
        self._sockets.setdefault(account_id, set()).add(conn)
        try:
            await self._acquire(account_id)
        except BaseException:
            self._unregister(conn)
            raise

    async def leave(self, conn: Connection) -> None:
        """Undo a successful `join`, whatever cancels the caller meanwhile."""
        try:
            await asyncio.shield(self._release(conn.account_id))
        finally:
            self._unregister(conn)

    def _unregister(self, conn: Connection) -> None:
        conns = self._sockets.get(conn.account_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._sockets[conn.account_id]

    def check_room(self, conn: Connection) -> None:
        """Raise TooManySockets when the socket's device or account is at its cap here."""
        conns = self._sockets.get(conn.account_id, ())
        if len(conns) >= self.max_per_account:
            raise TooManySockets("account", self.max_per_account)
        if sum(c.device_id == conn.device_id for c in conns) >= self.max_per_device:
            raise TooManySockets("device", self.max_per_device)

    async def _acquire(self, account_id: str) -> None:
        lock = self._locks.setdefault(account_id, asyncio.Lock())
        async with lock:
            self._refs[account_id] = self._refs.get(account_id, 0) + 1
            if self._refs[account_id] == 1:
                try:
                    await self.broker.subscribe(account_id)
                except BaseException:
                    self._refs[account_id] -= 1
                    if not self._refs[account_id]:
                        del self._refs[account_id]
                    raise

    async def _release(self, account_id: str) -> None:
        lock = self._locks.setdefault(account_id, asyncio.Lock())
        async with lock:
            self._refs[account_id] -= 1
            if self._refs[account_id] == 0:
                del self._refs[account_id]
                try:
                    await self.broker.unsubscribe(account_id)
                except Exception as exc:
                    log.warning("unsubscribe %s failed: %s", account_id, exc)
        if account_id not in self._refs and not lock.locked():
            self._locks.pop(account_id, None)

    def connections(self, account_id: str) -> list[Connection]:
        return list(self._sockets.get(account_id, ()))

    def positions(self) -> dict[str, int]:
        """For each account with live local sockets, the lowest `seq` any of them was sent."""
        out: dict[str, int] = {}
        for account_id, conns in self._sockets.items():
            live = [c.last_sent for c in conns if c.close_code is None]
            if live:
                out[account_id] = min(live)
        return out

    def devices(self) -> dict[str, str]:
        """device_id -> account_id of every local socket."""
        return {c.device_id: a for a, conns in self._sockets.items() for c in conns}

    # -- events --------------------------------------------------------------------------

    async def publish(self, account_id: str, seq: int, event: dict[str, Any]) -> None:
        """Deliver a committed event here at once and queue it for the other instances."""
        self.deliver_local(account_id, seq, event)
        if not self._publishes:
            return
        if len(self._outgoing) >= self.publish_backlog:
            # The broker is not keeping up; the relay and the sockets' catch-up cover it.
            self._outgoing.popleft()
            self.dropped_publishes += 1
        self._outgoing.append((account_id, msgpack.packb([self.instance_id, seq, event])))
        self._outgoing_ready.set()

    def deliver_local(self, account_id: str, seq: int, event: dict[str, Any]) -> None:
        conns = self._sockets.get(account_id)
        if not conns:
            return
        # The parties of one payment are published one after another with equal events (the
        # same data object, so the comparison is short): their frames encode it once.
        body = self._last_body
        if body is None or body.event != event:
            body = self._last_body = EventBody(event)
        frame = EventFrame(seq, event, body=body)
        for conn in list(conns):
            conn.offer(frame)

    def resync_account(self, account_id: str, upto: int) -> int:
        """Make the sockets of an account that were sent less than `upto` re-read the outbox."""
        count = 0
        for conn in self._sockets.get(account_id, ()):
            if conn.last_sent < upto and not conn.syncing:
                conn.request_resync()
                count += 1
        return count

    async def _publish_loop(self) -> None:
        while True:
            await self._outgoing_ready.wait()
            self._outgoing_ready.clear()
            while self._outgoing:
                batch = [
                    self._outgoing.popleft() for _ in range(min(PUBLISH_BATCH, len(self._outgoing)))
                ]
                try:
                    await self.broker.publish(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.dropped_publishes += len(batch)
                    log.warning("broker publish of %d events failed: %s", len(batch), exc)

    # -- devices -------------------------------------------------------------------------

    async def revoke_device(self, account_id: str, device_id: str) -> None:
        """Close the device's sockets here and, through the broker, on every instance."""
        self.close_device(account_id, device_id)
        try:
            await self.broker.publish_control(
                msgpack.packb([self.instance_id, "revoke", account_id, device_id])
            )
        except Exception as exc:
            # The relay's device check closes remote sockets of revoked devices anyway.
            log.warning("broadcast of device revocation failed: %s", exc)

    def close_device(self, account_id: str, device_id: str) -> int:
        for listener in self.revocation_listeners:
            listener(device_id)
        count = 0
        for conn in self.connections(account_id):
            if conn.device_id == device_id:
                conn.close(CLOSE_UNAUTHORIZED, "device revoked")
                count += 1
        return count

    def hook(self, name: str, *args: object) -> None:
        fn = self.hooks.get(name)
        if fn is not None:
            try:
                fn(*args)
            except Exception:
                log.exception("metrics hook %s failed", name)

    # -- broker sink ---------------------------------------------------------------------

    def deliver(self, account_id: str, payload: bytes) -> None:
        if payload.startswith(self._echo_head):
            # This hub's own event back from the broker: delivered here when it was published.
            return
        try:
            origin, seq, event = msgpack.unpackb(payload, raw=False)
        except Exception:
            log.warning("unreadable broker message on account %s", account_id)
            return
        if origin != self.instance_id:
            self.deliver_local(account_id, int(seq), event)

    def control(self, payload: bytes) -> None:
        try:
            origin, action, account_id, device_id = msgpack.unpackb(payload, raw=False)
        except Exception:
            log.warning("unreadable broker control message")
            return
        if origin != self.instance_id and action == "revoke":
            self.close_device(account_id, device_id)

    def resync(self) -> None:
        self.resyncs += 1
        if self.resyncs > 1:
            self.hook("broker_reconnected")
        for conns in list(self._sockets.values()):
            for conn in list(conns):
                conn.request_resync()
