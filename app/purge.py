"""The background purge of every serving process: rows past their window go, a pass at a time
(``models.purge``), and /metrics shows what went and how old the oldest kept key is."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from app import observability
from models import purge
from models.db import Database

log = logging.getLogger("paycode.purge")


class Purge:
    def __init__(self, db: Database, *, interval: float = 60.0) -> None:
        self.db = db
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="paycode-purge")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        # Processes started together do not all try at the same moment.
        await asyncio.sleep(self.interval * random.uniform(0.1, 0.5))
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("purge pass failed: %s", exc.__class__.__name__)
            await asyncio.sleep(self.interval)

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
