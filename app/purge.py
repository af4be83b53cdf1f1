"""The background purge of every serving process: rows past their window go, a pass at a time
(``models.purge``), and /metrics shows what went and how old the oldest kept key is."""

from __future__ import annotations

import asyncio
import logging
import random

from app import observability
from app.periodic import Periodic
from models import purge
from models.db import Database

log = logging.getLogger("paycode.purge")


class Purge:
    def __init__(self, db: Database, *, interval: float = 60.0) -> None:
        self.db = db
        # Processes started together do not all try at the same moment.
        first = interval * random.uniform(0.1, 0.5)
        self._periodic = Periodic("purge", self.run_once, interval=interval, first_delay=first)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def run_once(self) -> dict[str, int] | None:
        # The default executor, not the request workers: a long backlog's pass may take a
        # while, resting between batches.
        loop = asyncio.get_running_loop()
        removed = await loop.run_in_executor(None, purge.purge, self.db)
        oldest = await loop.run_in_executor(None, purge.oldest_idempotency_age, self.db)
        observability.record_purge(removed, oldest)
        if removed and any(removed.values()):
            log.info("purged %s", ", ".join(f"{n} {t}" for t, n in removed.items()))
        return removed
