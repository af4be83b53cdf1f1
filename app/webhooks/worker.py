"""The delivery worker of one process: turns outbox events into deliveries and sends them.

Each pass (every ``interval``, or at once when an attempt ends) is one short transaction on a
worker thread: it records the outcomes of the attempts that ended, fans new outbox events out
to the endpoints that want them, and leases due deliveries up to the free slots: at most
``concurrency`` attempts in flight in this process and ``per_endpoint`` to any one endpoint,
so a slow or dead endpoint holds only its own slots. Attempts run as tasks on the event loop.
Nothing here runs inside a payment's transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session

from app import observability
from app.http import in_thread
from app.settings import Settings
from app.webhooks import signing
from app.webhooks.addresses import Resolver, system_resolver
from app.webhooks.sender import ATTEMPT_TIMEOUT, Outcome, Sender
from models import webhook_queue as queue
from models.clock import utcnow
from models.db import Database
from models.events import Published
from models.sql import Tx
from models.webhooks import FAILED, SUCCEEDED

log = logging.getLogger("paycode.webhooks")

Publish = Callable[[list[Published]], Awaitable[None]]


@dataclass(frozen=True)
class WorkerConfig:
    allow_private: bool = False
    interval: float = 0.25
    concurrency: int = 128
    per_endpoint: int = 8
    timeout: float = ATTEMPT_TIMEOUT
    schedule: Sequence[float] = queue.RETRY_SCHEDULE
    disable_after: timedelta = queue.DISABLE_AFTER
    resolver: Resolver = system_resolver
    gauge_every: float = 2.0

    @property
    def lease(self) -> timedelta:
        # Past the attempt's own timeout, so a live holder always finishes inside its lease.
        return timedelta(seconds=self.timeout + 5)

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        """The deployment's setting, and the test suite's compressions of time via ``extra``."""
        extra = settings.extra
        base = cls()
        return cls(
            allow_private=settings.webhook_allow_private,
            interval=float(extra.get("webhook_interval", base.interval)),
            concurrency=int(extra.get("webhook_concurrency", base.concurrency)),
            per_endpoint=int(extra.get("webhook_per_endpoint", base.per_endpoint)),
            schedule=tuple(extra.get("webhook_retry_schedule", base.schedule)),
            disable_after=extra.get("webhook_disable_after", base.disable_after),
            resolver=extra.get("webhook_resolver", base.resolver),
        )


class WebhookWorker:
    def __init__(self, db: Database, config: WorkerConfig, publish: Publish | None = None) -> None:
        self.db = db
        self.config = config
        self.publish = publish
        self.sender = Sender(
            allow_private=config.allow_private,
            resolver=config.resolver,
            max_connections=config.concurrency,
            timeout=config.timeout,
        )
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._running: dict[asyncio.Task[None], queue.Job] = {}
        self._per_endpoint: dict[str, int] = {}
        self._gauge_at = 0.0
        self._stopping = False
        # Attempts that ended, waiting for the next pass to record them.
        self._done: list[tuple[queue.Job, Outcome]] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="paycode-webhooks")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        abandoned = list(self._running.values())
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        done, self._done = self._done, []
        if abandoned or done:
            try:
                await in_thread(self._settle, done, abandoned)
            except Exception as exc:
                # Their leases run out and another process makes the attempts again.
                log.warning("webhook leases not released: %s", exc.__class__.__name__)
        await self.sender.close()

    def _settle(self, done: list[tuple[queue.Job, Outcome]], abandoned: list[queue.Job]) -> None:
        """At shutdown: record the attempts that ended, and hand back the leases of those cut
        short so another process takes them at once."""
        now = utcnow()
        with self.db.write() as session:
            self._record(session, done, now)
            queue.release(Tx.of(session), abandoned, now)

    async def _run(self) -> None:
        while not self._stopping:
            # Cleared before the pass: an attempt that ends during it wakes the next one.
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhook pass failed: %s", exc.__class__.__name__)
            # asyncio.timeout, not wait_for: before Python 3.12 wait_for can swallow a
            # cancellation that arrives as the event is set, and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.interval):
                    await self._wake.wait()

    async def tick(self) -> None:
        done, self._done = self._done, []
        free = self.config.concurrency - len(self._running)
        room = {
            webhook_id: self.config.per_endpoint - count
            for webhook_id, count in self._per_endpoint.items()
        }
        try:
            jobs, finished = await in_thread(self._pass, done, max(0, free), room)
        except BaseException:
            # Recorded at the next pass; a lease that runs out meanwhile makes it a retry.
            self._done[:0] = done
            raise
        for job in jobs:
            self._launch(job)
        statuses, published = finished
        for status in statuses:
            if status in (SUCCEEDED, FAILED):
                observability.record_webhook_delivery(status)
        if published:
            log.warning("a webhook endpoint was disabled after failing for days")
            if self.publish is not None:
                await self.publish(published)
        now = time.monotonic()
        if now - self._gauge_at >= self.config.gauge_every:
            self._gauge_at = now
            oldest = await in_thread(self._oldest)
            observability.set_webhook_oldest_pending(oldest)
        observability.set_webhook_in_flight(len(self._running))

    def _pass(
        self, done: list[tuple[queue.Job, Outcome]], slots: int, room: dict[str, int]
    ) -> tuple[list[queue.Job], tuple[list[str | None], list[Published]]]:
        """One write transaction for everything a pass does: record the outcomes of attempts
        that ended, create the deliveries of new outbox events, lease due deliveries. Idle
        passes only read, and so never take SQLite's write lock."""
        now = utcnow()
        full = {k for k, v in room.items() if v <= 0}
        if not done:
            with self.db.raw_read() as tx:
                behind = queue.any_behind(tx)
                due = slots > 0 and queue.any_due(tx, now, full)
            if not behind and not due:
                return [], ([], [])
        with self.db.write() as session:
            finished = self._record(session, done, now)
            tx = Tx.of(session)
            queue.fan_out(tx, now)
            jobs = (
                queue.claim(
                    tx,
                    now,
                    slots=slots,
                    room=room,
                    per_endpoint=self.config.per_endpoint,
                    lease=self.config.lease,
                )
                if slots > 0
                else []
            )
        return jobs, finished

    def _record(
        self, session: Session, done: list[tuple[queue.Job, Outcome]], now: datetime
    ) -> tuple[list[str | None], list[Published]]:
        if not done:
            return [], []
        results = [
            (job, queue.Result(o.succeeded, o.outcome, o.status_code, o.error)) for job, o in done
        ]
        return queue.finish(
            session,
            results,
            now,
            schedule=self.config.schedule,
            disable_after=self.config.disable_after,
        )

    def _oldest(self) -> float:
        with self.db.raw_read() as tx:
            moment = queue.oldest_pending(tx)
        return 0.0 if moment is None else max(0.0, (utcnow() - moment).total_seconds())

    def _launch(self, job: queue.Job) -> None:
        self._per_endpoint[job.webhook_id] = self._per_endpoint.get(job.webhook_id, 0) + 1
        task = asyncio.create_task(self._attempt(job), name=f"webhook-{job.delivery_id}")
        self._running[task] = job
        task.add_done_callback(self._landed)

    def _landed(self, task: asyncio.Task[None]) -> None:
        job = self._running.pop(task, None)
        if job is not None:
            left = self._per_endpoint.get(job.webhook_id, 1) - 1
            if left > 0:
                self._per_endpoint[job.webhook_id] = left
            else:
                self._per_endpoint.pop(job.webhook_id, None)
        self._wake.set()

    async def _attempt(self, job: queue.Job) -> None:
        headers = signing.headers(job.secrets, job.delivery_id, int(time.time()), job.body)
        outcome = await self.sender.post(job.url, headers, job.body)
        observability.record_webhook_attempt(outcome.outcome, outcome.seconds)
        self._done.append((job, outcome))
