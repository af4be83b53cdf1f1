"""The delivery worker of one process: turns outbox events into deliveries and sends them.

Each pass is one short write transaction: it records the outcomes of the attempts that ended,
fans new outbox events out to the endpoints that want them (sending at once, as one flight,
those it has slots for), and leases due retries, up to the free slots: at most ``concurrency``
attempts in flight in this process and ``per_endpoint`` to any one endpoint, so a slow or dead
endpoint holds only its own slots. On SQLite a read before it makes the rows, and the write
goes to the queue's own database file (models/db.py), whose lock no payment waits for: on a
worker thread in a server, on the event loop's own thread in ``paycode webhooks``. On
PostgreSQL the pass runs on the event loop over the loop's pool (``on_loop``), as the payments
do.

A pass runs when this process commits events (``nudge``), when attempts end, and every
``interval`` for what other processes committed; passes are at least ``spacing`` apart, so
under load one pass carries the deliveries of every commit in that window, and only
``busy_spacing`` apart while a pass leaves deliveries it had no room for: an endpoint's
throughput is its slots divided by the time between passes. While the last look found no
endpoint enabled anywhere, a nudge costs no database unit: the look every ``interval`` is
what notices the first endpoint (its deliveries wait for it, at most that long). Attempts are
sent by ``Sender`` on the event loop. Nothing here runs inside a payment's transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from app import observability
from app.http import in_thread, in_writer, on_loop
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

T = TypeVar("T")
log = logging.getLogger("paycode.webhooks")

Publish = Callable[[list[Published]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PassRows:
    """What a pass writes, made before its write: the ended attempts' outcomes, the new
    events' fan-out, whether a flight of a stopped process waits to be recovered, and whether
    any delivery was due for a claim (on SQLite a claim that would find none is not made
    inside the write lock; read in the write's own transaction, the claim itself decides)."""

    outcomes: list[queue.Settlement]
    plan: queue.FanOut
    stranded: bool
    due: bool


# A pass's rows given its transaction, and its write given those rows (see WebhookWorker._pass).
Rows = Callable[..., PassRows]
Write = Callable[[PassRows, Tx, Tx], tuple[list[queue.Job], queue.Finished, bool]]


@dataclass(frozen=True)
class WorkerConfig:
    allow_private: bool = False
    interval: float = 0.25
    spacing: float = 0.05
    busy_spacing: float = 0.005
    # One busy shop's endpoint gets two events per sale of every counter, all of a pass's at
    # once: at 16 slots its deliveries queued behind the passes (drain 4 s, p99 185 ms to the
    # receiver at 200 sales/s); at 64 they kept pace, but at 850 sales/s a pass 50 ms apart
    # carries ~90 for it, and those past its slots were written pending, then leased, then
    # updated, three writes instead of one (a third of a separate sender's time in SQLite's
    # write lock, passes every 5 ms instead of 50). The total keeps room for 16 endpoints
    # that hold every slot of theirs for the whole 10 s timeout before another one waits.
    concurrency: int = 2048
    per_endpoint: int = 128
    # Outcomes wait up to this long to be written together: a delivery's row costs SQLite
    # the pages of its indexes, each endpoint's own, rewritten at every commit, so 200 rows
    # in one commit cost half what 50 rows in each of four do. A process stopped meanwhile
    # leaves those attempts to be made again when their flight's lease runs out.
    record_spacing: float = 0.25
    record_batch: int = 4096
    timeout: float = ATTEMPT_TIMEOUT
    schedule: Sequence[float] = queue.RETRY_SCHEDULE
    disable_after: timedelta = queue.DISABLE_AFTER
    resolver: Resolver = system_resolver
    gauge_every: float = 2.0
    # The process does nothing but deliver (``paycode webhooks``): on SQLite its pass runs
    # on the event loop's own thread, without a thread hop each way.
    passes_on_loop: bool = False

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
            spacing=float(extra.get("webhook_spacing", base.spacing)),
            busy_spacing=float(extra.get("webhook_busy_spacing", base.busy_spacing)),
            record_spacing=float(extra.get("webhook_record_spacing", base.record_spacing)),
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
        self._nudged = False
        # The last pass left deliveries due that it had no slot for.
        self._behind = False
        self._running: dict[str, queue.Job] = {}
        self._per_endpoint: dict[str, int] = {}
        self._gauge_at = 0.0
        # The last look found no endpoint enabled anywhere: until the next look, a commit of
        # this process owes no delivery, and its nudge costs no database unit.
        self._none_enabled = False
        self._looked_at = 0.0
        self._stopping = False
        # Attempts that ended, waiting for a pass to record them, and when the first ended.
        self._done: list[tuple[queue.Job, Outcome]] = []
        self._first_done_at = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="paycode-webhooks")

    def wake(self) -> None:
        self._wake.set()

    def nudge(self) -> None:
        """This process committed outbox events: deliveries are owed, no read needed to know."""
        self._nudged = True
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # After close no attempt lands: what is still running is abandoned.
        await self.sender.close()
        abandoned = list(self._running.values())
        self._running.clear()
        done, self._done = self._done, []
        if abandoned or done:
            try:
                await in_thread(self._settle, done, abandoned)
            except Exception as exc:
                # Their leases run out and another process makes the attempts again.
                log.warning("webhook leases not released: %s", exc.__class__.__name__)

    def _settle(self, done: list[tuple[queue.Job, Outcome]], abandoned: list[queue.Job]) -> None:
        """At shutdown: record the attempts that ended, and hand back the leases of those cut
        short so another process takes them at once."""
        now = utcnow()
        # A flight of this process not yet deleted still has an attempt among these two.
        flights = {job.flight for job in [*abandoned, *(job for job, _ in done)] if job.flight}
        with self.db.raw_queue_unit() as (tx, main):
            queue.finish(tx, self._results(done), now, schedule=self.config.schedule, main=main)
            queue.release(tx, abandoned, now, flights=list(flights), main=main)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            # Cleared before the pass: what lands or commits during it wakes the next one.
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
            spacing = self.config.busy_spacing if self._behind else self.config.spacing
            rest = started + spacing - loop.time()
            if rest > 0:
                await asyncio.sleep(rest)

    async def tick(self) -> None:
        nudged, self._nudged = self._nudged, False
        if nudged and not self._done and not self._running:
            if time.monotonic() - self._looked_at >= self.config.interval:
                # A look now and then even under a stream of commits: it is what learns
                # that no endpoint is enabled, and sees the first one that is.
                nudged = False
            elif self._none_enabled:
                return
        done = self._take_done()
        free = self.config.concurrency - len(self._running)
        room = {
            webhook_id: self.config.per_endpoint - count
            for webhook_id, count in self._per_endpoint.items()
        }
        # A flight has landed once none of its attempts runs: this pass records the last ones.
        flying = {job.flight for job in self._running.values()}
        landed = sorted({job.flight for job, _ in done if job.flight and job.flight not in flying})
        try:
            jobs, finished, self._behind = await self._pass(
                done, max(0, free), room, landed, look=not nudged
            )
        except BaseException:
            # Recorded at the next pass; a lease that runs out meanwhile makes it a retry.
            self._done[:0] = done
            self._first_done_at = 0.0
            if nudged:
                self._nudged = True
            raise
        for job in jobs:
            self._launch(job)
        settled = Counter(s for s in finished.statuses if s in (SUCCEEDED, FAILED))
        for status, count in settled.items():
            observability.record_webhook_delivery(status, count)
        if finished.failing:
            published = await in_thread(self._note_failures, finished.failing)
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

    def _take_done(self) -> list[tuple[queue.Job, Outcome]]:
        """The ended attempts this pass records: none until the first has waited
        ``record_spacing`` or there are ``record_batch`` of them."""
        waited = time.monotonic() - self._first_done_at
        if waited < self.config.record_spacing and len(self._done) < self.config.record_batch:
            return []
        done, self._done = self._done, []
        return done

    async def _pass(
        self,
        done: list[tuple[queue.Job, Outcome]],
        slots: int,
        room: dict[str, int],
        landed: list[str],
        *,
        look: bool,
    ) -> tuple[list[queue.Job], queue.Finished, bool]:
        """Everything a pass writes, in one unit. On SQLite its rows and bodies are made by a
        read before it, outside the queue file's write lock. With nothing to record and no
        commit of this process to fan out, a read decides first whether there is work at
        all, so an idle pass never takes that lock."""
        now = utcnow()
        if look and not done and not await self._any_work(now, slots, room):
            return [], queue.Finished([], []), False
        # An endpoint with every slot taken before this pass is not even read by the claim.
        full = bool(queue.full_endpoints(room))
        free = dict(room)
        rows = partial(self._rows, self._results(done), now, slots, free)
        write = partial(self._write, now, slots, free, full, landed)
        if not self.db.is_sqlite:
            # No single write lock to keep short: one transaction, whose read locks the
            # endpoints it fans out (SKIP LOCKED), so two processes never build the same
            # deliveries only for one of them to throw its work away.
            return await on_loop(self._unit, partial(_read_and_write, rows, write))
        read = partial(_read_first, rows, self.db.raw_read)
        work = partial(write, read() if self.config.passes_on_loop else await in_thread(read))
        if self.config.passes_on_loop:
            return self._unit(work)
        if self.db.queue_apart:
            # The queue's own file: its write lock is nobody else's in this process.
            return await in_thread(self._unit, work)
        assert self.db.group is not None, "SQLite's writes go through the group commit"
        return await in_writer(self.db.group, lambda tx: work(tx, tx))

    def _unit(self, work: Callable[[Tx, Tx], T]) -> T:
        if not self.db.is_sqlite:
            with self.db.raw_write_on_loop() as tx:
                return work(tx, tx)
        with self.db.raw_queue_unit() as (tx, main):
            return work(tx, main)

    def _rows(
        self,
        results: list[tuple[queue.Job, queue.Result]],
        now: datetime,
        slots: int,
        free: dict[str, int],
        tx: Tx,
        *,
        lock: bool,
    ) -> PassRows:
        outcomes = queue.prepare_outcomes(tx, results, now, schedule=self.config.schedule)
        # With the room the pass began with: the fan-out below takes slots from ``free``.
        due = lock or (slots > 0 and queue.any_due(tx, now, queue.full_endpoints(free)))
        plan = queue.plan_fan_out(tx, now, slots=slots, room=free, lock=lock, **self._lease_terms)
        return PassRows(outcomes, plan, queue.any_stranded(tx, now), due)

    @property
    def _lease_terms(self) -> dict[str, Any]:
        return {"per_endpoint": self.config.per_endpoint, "lease": self.config.lease}

    async def _any_work(self, now: datetime, slots: int, room: dict[str, int]) -> bool:
        full = queue.full_endpoints(room)
        self._looked_at = time.monotonic()
        if self.db.is_sqlite:
            enabled, work = await in_thread(self._look, self.db.raw_read, now, slots, full)
        else:
            enabled, work = await on_loop(self._look, self.db.raw_read_on_loop, now, slots, full)
        self._none_enabled = not enabled
        return work

    @staticmethod
    def _look(
        open_read: Callable[[], AbstractContextManager[Tx]],
        now: datetime,
        slots: int,
        full: set[str],
    ) -> tuple[bool, bool]:
        """Whether any endpoint is enabled, and whether there is work for a pass."""
        with open_read() as tx:
            if not queue.any_enabled(tx):
                return False, False
            due = slots > 0 and queue.any_due(tx, now, full)
            return True, due or queue.any_behind(tx) or queue.any_stranded(tx, now)

    def _write(
        self,
        now: datetime,
        slots: int,
        free: dict[str, int],
        full: bool,
        landed: list[str],
        rows: PassRows,
        tx: Tx,
        main: Tx,
    ) -> tuple[list[queue.Job], queue.Finished, bool]:
        finished = queue.settle(tx, rows.outcomes, landed, main=main)
        if rows.stranded:
            # A recovered flight's deliveries are due at once: the claim below may take them.
            queue.recover(tx, now, main=main)
        created, jobs = queue.apply_fan_out(tx, rows.plan, main=main)
        behind = created > len(jobs)
        slots -= len(jobs)
        if slots > 0 and (rows.due or rows.stranded):
            claimed = queue.claim(tx, now, slots=slots, room=free, main=main, **self._lease_terms)
            # Due deliveries were waiting: more may be, behind this claim's slots.
            behind = behind or bool(claimed)
            jobs += claimed
        else:
            behind = True
        return jobs, finished, behind or full

    @staticmethod
    def _results(
        done: list[tuple[queue.Job, Outcome]],
    ) -> list[tuple[queue.Job, queue.Result]]:
        return [
            (job, queue.Result(o.succeeded, o.outcome, o.status_code, o.error)) for job, o in done
        ]

    def _note_failures(self, webhook_ids: Sequence[str]) -> list[Published]:
        now = utcnow()
        with self.db.raw_queue_unit() as (tx, main):
            overdue = queue.note_failures(
                tx, webhook_ids, now, self.config.disable_after, main=main
            )
        if not overdue:
            return []
        with self.db.write() as session:
            return queue.disable(session, overdue, now)

    def _oldest(self) -> float:
        with self.db.raw_read() as tx:
            moment = queue.oldest_pending(tx)
        return 0.0 if moment is None else max(0.0, (utcnow() - moment).total_seconds())

    def _launch(self, job: queue.Job) -> None:
        self._per_endpoint[job.webhook_id] = self._per_endpoint.get(job.webhook_id, 0) + 1
        self._running[job.delivery_id] = job
        headers = signing.headers(job.secrets, job.delivery_id, int(time.time()), job.body)
        self.sender.send(job.url, headers.items(), job.body, partial(self._landed, job))

    def _landed(self, job: queue.Job, outcome: Outcome) -> None:
        if self._running.pop(job.delivery_id, None) is None:
            return
        left = self._per_endpoint.get(job.webhook_id, 1) - 1
        if left > 0:
            self._per_endpoint[job.webhook_id] = left
        else:
            self._per_endpoint.pop(job.webhook_id, None)
        observability.record_webhook_attempt(outcome.outcome, outcome.seconds)
        if not self._done:
            self._first_done_at = time.monotonic()
        self._done.append((job, outcome))
        self._wake.set()


def _read_first(rows: Rows, open_read: Callable[[], AbstractContextManager[Tx]]) -> PassRows:
    """SQLite: a pass's rows, made in a read before its write transaction."""
    with open_read() as tx:
        return rows(tx, lock=False)


def _read_and_write(
    rows: Rows, write: Write, tx: Tx, main: Tx
) -> tuple[list[queue.Job], queue.Finished, bool]:
    """PostgreSQL: a pass's rows made in its write transaction (``main`` is that
    transaction too), the endpoints locked."""
    return write(rows(tx, lock=True), tx, main)
