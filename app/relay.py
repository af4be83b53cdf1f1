"""The outbox relay: what the broker did not carry still reaches every socket, within a second.

An event can be committed and never published: the broker was down, the committing process
died between commit and publish, or another process committed it (the ``paycode deposit``
CLI). Rather than mark every event as published (a write on the payment's hot path), each
instance reconciles its OWN sockets against the outbox: every tick it reads ``last_seq`` of
the accounts it has sockets for (one indexed query, whatever the payment rate), and a socket
still behind the ``last_seq`` seen one tick earlier re-reads the outbox from its last sent
``seq``. The broker stays the fast path; the relay is the guarantee, and it works with the
broker down. The same tick closes sockets of devices revoked through an instance whose
broadcast was lost.
"""

from __future__ import annotations

import logging
import time

from app.auth import Principal
from app.http import in_thread
from app.periodic import Periodic
from app.tokens import TokenCache
from models.db import Database
from realtime.hub import Hub

log = logging.getLogger("paycode.relay")

_LAST_SEQS = "SELECT id, last_seq FROM account WHERE id IN ({marks})"
_LIVE_DEVICES = "SELECT id FROM device WHERE revoked_at IS NULL AND id IN ({marks})"


def read_marks(
    db: Database, account_ids: list[str], device_ids: list[str]
) -> tuple[dict[str, int], set[str]]:
    """`last_seq` of each account, and which of the devices are revoked or gone.

    Hand-written like the payment's statements: built through the ORM, the two reads of a
    process holding 900 sockets took tens of milliseconds of the GIL every tick, a stall of
    every socket's frames (docs/BENCHMARKS.md, "Redis without its client's wrapping")."""
    with db.raw_read() as tx:
        last_seqs: dict[str, int] = dict(tx.all_in(_LAST_SEQS, account_ids))
        alive = {device_id for (device_id,) in tx.all_in(_LIVE_DEVICES, device_ids)}
    return last_seqs, set(device_ids) - alive


def sweep_tokens(db: Database, tokens: TokenCache) -> int:
    """Drop the cached tokens of devices revoked through an instance whose broadcast was lost."""
    with db.raw_read() as tx:
        return tokens.sweep(tx, Principal)


class Relay:
    def __init__(
        self, db: Database, hub: Hub, *, interval: float = 0.5, tokens: TokenCache | None = None
    ) -> None:
        self.db = db
        self.hub = hub
        self.tokens = tokens
        self.interval = interval
        self._seen: dict[str, int] = {}
        self.resyncs = 0
        self._last_tick = time.monotonic()
        self._periodic = Periodic("relay", self._pass, interval=interval)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def _pass(self) -> None:
        try:
            await self.tick()
            self._last_tick = time.monotonic()
        finally:
            # How stale the relay's view is: grows while the database is unreachable.
            self.hub.hook("relay_lag", time.monotonic() - self._last_tick)

    async def tick(self) -> None:
        if self.tokens:
            await in_thread(sweep_tokens, self.db, self.tokens)
        positions = self.hub.positions()
        devices = self.hub.devices()
        if not positions and not devices:
            self._seen = {}
            return
        last_seqs, revoked = await in_thread(read_marks, self.db, list(positions), list(devices))
        # Compare with what the database said one tick ago: an event published normally
        # has had a whole tick to arrive, so only lost ones cause a re-read.
        now = self.hub.positions()
        for account_id, committed in self._seen.items():
            sent = now.get(account_id)
            if sent is not None and sent < committed:
                self.resyncs += self.hub.resync_account(account_id, committed)
        self._seen = last_seqs
        for device_id in revoked:
            account_id = devices[device_id]
            if self.hub.close_device(account_id, device_id):
                log.info("closed sockets of revoked device %s", device_id)
