"""What one running app holds: its settings, its database and its realtime hub."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from app.admission import Admission
from app.settings import Settings
from app.tokens import TokenCache
from models.codes import KnownCodes
from models.db import Database
from models.events import Published
from models.issuance import KnownAgencies
from realtime.hub import Hub

log = logging.getLogger("paycode.publish")


@dataclass
class AppState:
    settings: Settings
    db: Database
    hub: Hub
    admission: Admission
    tokens: TokenCache = field(default_factory=TokenCache)
    known_codes: KnownCodes = field(default_factory=KnownCodes)
    known_agencies: KnownAgencies = field(default_factory=KnownAgencies)
    # Told after this process publishes committed events (the webhook worker: deliveries owed).
    on_publish: list[Callable[[], None]] = field(default_factory=list)

    async def publish(self, events: Iterable[Published]) -> None:
        """Hand committed events to the hub. A failure here loses nothing: the outbox relay
        publishes what the broker did not take, and sockets replay from the outbox."""
        events = list(events)
        if events and self.settings.fault_kill_after_commit:
            # The worst moment to die: committed, nothing published. Tests prove the relay of
            # another instance still delivers.
            os.kill(os.getpid(), signal.SIGKILL)
        for item in events:
            try:
                await self.hub.publish(item.account_id, item.seq, item.event)
            except Exception:
                log.warning("publish failed for %s seq %s", item.account_id, item.seq)
        if events:
            for listener in self.on_publish:
                listener()


def state_of(conn: HTTPConnection) -> AppState:
    return conn.app.state.paycode  # type: ignore[no-any-return]
