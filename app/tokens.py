"""The principals of recently seen bearer tokens, so a request resolves its token without a
database read.

A revoked device must be refused everywhere as fast as its sockets are closed, so an entry
leaves the cache by the same two paths that close a revoked device's sockets:

* the hub's revocation (``Hub.revoke_device`` here, its broker broadcast on every other
  process) drops the device's entry at once;
* the outbox relay's tick (every 0.5 s) re-reads every cached device in one query and drops
  those revoked or gone, which covers a broadcast the broker lost.

An entry that no tick has confirmed for ``MAX_AGE`` seconds (the database or the relay is
stuck) is not served: the request reads the database as before.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from models.sql import Tx

# Several relay ticks: a missed tick or two does not send every request to the database.
MAX_AGE = 2.0
MAX_ENTRIES = 50_000
# A revoked device is remembered this long, so a lookup that read the database just before
# the revocation committed cannot put it back.
REVOKED_MEMORY = 10.0

_ALIVE = (
    "SELECT device.id, account.id, account.handle, account.display_name"
    " FROM device JOIN account ON account.id = device.account_id"
    " WHERE device.revoked_at IS NULL AND device.id IN ({marks})"
)


@dataclass(slots=True)
class _Entry:
    principal: Any
    token_hash: str
    checked: float


class TokenCache:
    """Token hash → principal (any object with ``device_id``), per process."""

    def __init__(self, max_age: float = MAX_AGE) -> None:
        self.max_age = max_age
        self._by_hash: dict[str, _Entry] = {}
        self._by_device: dict[str, _Entry] = {}
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_hash)

    def get(self, token_hash: str) -> Any | None:
        entry = self._by_hash.get(token_hash)
        if entry is None or time.monotonic() - entry.checked > self.max_age:
            return None
        return entry.principal

    def put(self, token_hash: str, principal: Any, read_at: float) -> None:
        """Remember what the database said at ``read_at`` (monotonic, taken before the read)."""
        device_id = principal.device_id
        with self._lock:
            revoked = self._revoked.get(device_id)
            if revoked is not None and revoked >= read_at:
                return
            if len(self._by_hash) >= MAX_ENTRIES:
                self._by_hash.clear()
                self._by_device.clear()
            old = self._by_device.get(device_id)
            if old is not None:
                self._by_hash.pop(old.token_hash, None)
            entry = _Entry(principal, token_hash, read_at)
            self._by_hash[token_hash] = entry
            self._by_device[device_id] = entry

    def forget_device(self, device_id: str) -> None:
        """The device was revoked: refuse its token from now on."""
        with self._lock:
            self._revoked[device_id] = time.monotonic()
            entry = self._by_device.pop(device_id, None)
            if entry is not None:
                self._by_hash.pop(entry.token_hash, None)

    def sweep(self, tx: Tx, rebuild: Any) -> int:
        """Re-read every cached device: drop the revoked or gone, refresh the rest (a renamed
        account), and confirm them as of the start of the read. ``rebuild(account_id,
        handle, display_name, device_id)`` makes a principal. Returns how many were dropped."""
        started = time.monotonic()
        devices = list(self._by_device)
        alive = {row[0]: row for row in tx.all_in(_ALIVE, devices)}
        dropped = 0
        with self._lock:
            for device_id in devices:
                entry = self._by_device.get(device_id)
                if entry is None or entry.checked > started:
                    continue
                row = alive.get(device_id)
                if row is None:
                    del self._by_device[device_id]
                    self._by_hash.pop(entry.token_hash, None)
                    dropped += 1
                    continue
                entry.principal = rebuild(row[1], row[2], row[3], device_id)
                entry.checked = started
            horizon = started - REVOKED_MEMORY
            for device_id in [d for d, at in self._revoked.items() if at < horizon]:
                del self._revoked[device_id]
        return dropped
