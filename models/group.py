"""Group commit for SQLite: one writer thread per process runs every unit of work waiting for
it in one transaction, each unit in a savepoint of its own, and commits them together.

SQLite has one writer at a time anyway; what a unit of its own costs is the rest — the
pool checkout, ``BEGIN IMMEDIATE``, the ``COMMIT`` and its WAL append, the reset on return —
about 0.3 ms of CPU of a payment's 0.7 ms in process (docs/BENCHMARKS.md). A unit that raises
is rolled back to its savepoint and only its caller gets the error: one refusal never fails
the others. Every caller gets its answer only once the batch has committed, so nothing is
published that could still be rolled back; if the COMMIT itself fails, every caller of the
batch gets that error and none of their effects exist.

The batch is what arrived while the previous one was committing: no unit waits for company.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Engine

from models import sql
from models.sql import Tx

T = TypeVar("T")
MAX_BATCH = 64

Unit = tuple[Callable[[Tx], Any], "Future[Any]"]


class GroupWriter:
    """The writer of one SQLite database in this process."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Unit | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0
        self.units = 0

    def submit(self, work: Callable[[Tx], T]) -> Future[T]:
        """``work(tx)`` in the next batch. The future is settled once the batch has committed,
        with the unit's result or the error it raised (its own effects rolled back, the
        others' kept); an event loop awaits it through ``asyncio.wrap_future``, with no thread
        of its own."""
        self._ensure_started()
        done: Future[T] = Future()
        self._queue.put((work, done))
        return done

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="paycode-group-writer", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            self._commit(batch)

    def _commit(self, batch: list[Unit]) -> None:
        # A unit its submitter cancelled while it waited is not run; one that starts can no
        # longer be cancelled, so every future left is settled exactly once below.
        batch = [unit for unit in batch if unit[1].set_running_or_notify_cancel()]
        if not batch:
            return
        outcomes: list[tuple[bool, Any]] = []
        try:
            with sql.unit(self.engine, write=True) as tx:
                for work, _done in batch:
                    tx.run("SAVEPOINT unit")
                    try:
                        outcomes.append((True, work(tx)))
                    except BaseException as exc:  # handed to its caller
                        tx.run("ROLLBACK TO unit")
                        outcomes.append((False, exc))
                    tx.run("RELEASE unit")
        except BaseException as exc:  # every caller of the batch gets it
            for _work, done in batch:
                done.set_exception(exc)
            return
        self.batches += 1
        self.units += len(batch)
        for (_work, done), (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)
