"""A pass run every few seconds for the life of a serving process (the outbox relay, the
purge): a pass that fails is logged and the next one runs on time; stopping cancels the task
and waits for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("paycode")


class Periodic:
    def __init__(
        self,
        name: str,
        run_pass: Callable[[], Awaitable[object]],
        *,
        interval: float,
        first_delay: float | None = None,
    ) -> None:
        self.name = name
        self.run_pass = run_pass
        self.interval = interval
        self.first_delay = interval if first_delay is None else first_delay
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"paycode-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        await asyncio.sleep(self.first_delay)
        while True:
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s pass failed: %s", self.name, exc.__class__.__name__)
            await asyncio.sleep(self.interval)
