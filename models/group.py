"""Group commit for SQLite: every unit of work waiting for the writer runs in one transaction,
each unit in a savepoint of its own, and they commit together.

SQLite has one writer at a time anyway; what a unit of its own costs is the rest — the
``BEGIN IMMEDIATE``, the ``COMMIT`` and its WAL append — about 0.3 ms of CPU of a payment's
0.7 ms in process (docs/BENCHMARKS.md). A unit that raises is rolled back to its savepoint and
only its caller gets the error: one refusal never fails the others. Every caller gets its
answer only once the batch has committed, so nothing is published that could still be rolled
back; if the COMMIT itself fails, every caller of the batch gets that error and none of their
effects exist.

The batch is what arrived while the previous one ran: no unit waits for company. Units
submitted from the event loop (``submit_here``) run on the loop itself, at its next turn:
a writer thread handing the GIL back and forth with the loop around every statement (the
sqlite3 module lets go of it for each step, and getting it back waits for the loop to let go
in turn) spent more time waiting than writing (docs/BENCHMARKS.md, "SQLite's group commit
on the event loop"). The loop never waits for the write lock: when another connection holds
it (another process, a worker thread's write, a checkpoint restarting the log), the batch
goes to the writer thread, which waits for the lock as ``sql.begin_immediate`` does, and the
loop goes on. Its next units wait on the loop until the thread is done and calls it back:
following the first batch into the thread, every later one went there too. Units submitted
from other threads (``submit``) always take the thread.

The group writes on a connection of its own, so neither path waits for the engine's pool. The
writer thread opens it for the first unit (opening runs pragmas, which can wait for a lock)
and it is held until ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection

from models import sql
from models.sql import Tx

T = TypeVar("T")
MAX_BATCH = 64

Unit = tuple[Callable[[Tx], Any], "Future[Any]"]
LoopUnit = tuple[Callable[[Tx], Any], "asyncio.Future[Any]"]
# Either kind of future: both settle through set_result and set_exception.
Settled = Future[Any] | asyncio.Future[Any]


class GroupWriter:
    """The writer of one SQLite database in this process."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Unit | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # Held by whichever path is writing on the connection: the loop only tries it.
        self._writing = threading.Lock()
        self._proxy: PoolProxiedConnection | None = None
        self._pending: list[LoopUnit] = []
        # The loop whose units are pending: the thread calls it back when it is done writing.
        self._owner_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.batches = 0
        self.units = 0
        # Batches the loop handed to the thread because the write lock was taken.
        self.handed_over = 0

    def submit(self, work: Callable[[Tx], T]) -> Future[T]:
        """``work(tx)`` in the writer thread's next batch. The future is settled once the
        batch has committed, with the unit's result or the error it raised (its own effects
        rolled back, the others' kept)."""
        self._ensure_started()
        done: Future[T] = Future()
        self._queue.put((work, done))
        return done

    def submit_here(self, work: Callable[[Tx], T]) -> asyncio.Future[T]:
        """``work(tx)`` in the batch the running event loop writes at its next turn, with
        every other unit submitted before then; settled as ``submit``'s future is."""
        loop = self._owner_loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._pending.append((work, done))
        if len(self._pending) == 1:
            loop.call_soon(self._write_pending)
        return done

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None
        with self._writing:
            if self._proxy is not None:
                self._proxy.close()
                self._proxy = None

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="paycode-group-writer", daemon=True
                )
                self._thread.start()

    def _connection(self) -> sqlite3.Connection:
        # Called with ``_writing`` held.
        if self._proxy is None:
            self._proxy = self.engine.raw_connection()
        return self._proxy.driver_connection  # type: ignore[return-value]

    def _write_pending(self) -> None:
        # A unit whose awaiting task was cancelled before this turn is not run.
        batch = [unit for unit in self._pending if not unit[1].cancelled()]
        self._pending = []
        while batch:
            part, batch = batch[: self.max_batch], batch[self.max_batch :]
            if self._closed:
                _settle_all(part, RuntimeError("the database has been closed"))
            elif self._proxy is None:
                # Opening the connection can wait for a lock (its pragmas): the thread opens it.
                self._hand_over(part)
            elif not self._writing.acquire(blocking=False):
                # The writer thread is writing a batch handed over earlier. Handing this one
                # over too would keep every batch in the thread once one went there; these
                # wait on the loop instead, and the thread calls the loop when it is done.
                self._pending = part + batch + self._pending
                if self._writing.acquire(blocking=False):
                    # It finished just now, maybe before it could see them waiting.
                    self._writing.release()
                    asyncio.get_running_loop().call_soon(self._write_pending)
                return
            else:
                self._write_here(part)

    def _write_here(self, batch: list[LoopUnit]) -> None:
        """The batch on the loop, with ``_writing`` held; to the writer thread if another
        connection holds SQLite's write lock."""
        began = False
        try:
            began = sql.try_begin_immediate(self._connection())
            if began:
                self._write(batch)
        except BaseException as exc:  # no transaction: every caller of the batch gets it
            _settle_all(batch, exc)
            return
        finally:
            self._writing.release()
        if not began:
            self._hand_over(batch)

    def _hand_over(self, batch: list[LoopUnit]) -> None:
        """The batch to the writer thread, which waits for the lock; each loop future follows
        its unit's (a cancelled loop future cancels the unit if it has not started)."""
        self.handed_over += 1
        loop = asyncio.get_running_loop()
        for work, done in batch:
            unit = self.submit(work)
            done.add_done_callback(lambda done, unit=unit: done.cancelled() and unit.cancel())
            unit.add_done_callback(
                lambda unit, done=done: loop.call_soon_threadsafe(_copy_outcome, unit, done)
            )

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
            # A unit its submitter cancelled while it waited is not run; one that starts can
            # no longer be cancelled, so every future left is settled exactly once.
            batch = [unit for unit in batch if unit[1].set_running_or_notify_cancel()]
            if not batch:
                continue
            with self._writing:
                try:
                    sql.begin_immediate(self._connection())
                except BaseException as exc:  # every caller of the batch gets it
                    _settle_all(batch, exc)
                else:
                    self._write(batch)
            self._call_back_pending()

    @contextlib.contextmanager
    def held_off(self) -> Iterator[None]:
        """The group writes nothing while the block runs in another thread (a checkpoint
        restarting the log holds SQLite's write lock): units from the loop wait on the loop
        rather than going to the writer thread, and the loop writes them when it ends."""
        with self._writing:
            yield
        self._call_back_pending()

    def _call_back_pending(self) -> None:
        # Called by a thread that has just let go of ``_writing``: units the loop kept while
        # it was held are the loop's to write again.
        if self._pending and self._owner_loop is not None:
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile
                self._owner_loop.call_soon_threadsafe(self._write_pending)

    def _write(self, batch: list[tuple[Callable[[Tx], Any], Settled]]) -> None:
        """The batch in the transaction just begun, committed; every future settled."""
        connection = self._connection()
        outcomes: list[tuple[bool, Any]] = []
        try:
            tx = Tx(connection, is_sqlite=True, dbapi_error=sqlite3.Error)
            try:
                for work, _done in batch:
                    tx.run("SAVEPOINT unit")
                    try:
                        outcomes.append((True, work(tx)))
                    except BaseException as exc:  # handed to its caller
                        tx.run("ROLLBACK TO unit")
                        outcomes.append((False, exc))
                    tx.run("RELEASE unit")
                tx.commit()
            finally:
                tx.close()
        except BaseException as exc:  # every caller of the batch gets it
            try:
                connection.rollback()
            except sqlite3.Error:
                # A connection that cannot roll back is of no more use: the next unit opens
                # another.
                self._discard_connection()
            _settle_all(batch, exc)
            return
        self.batches += 1
        self.units += len(batch)
        for (_work, done), (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

    def _discard_connection(self) -> None:
        if self._proxy is not None:
            self._proxy.invalidate()
            self._proxy = None


def _settle_all(batch: list[tuple[Callable[[Tx], Any], Settled]], exc: BaseException) -> None:
    for _work, done in batch:
        done.set_exception(exc)


def _copy_outcome(unit: Future[Any], done: asyncio.Future[Any]) -> None:
    if done.done():
        return
    if unit.cancelled():
        done.cancel()
    elif unit.exception() is not None:
        done.set_exception(unit.exception())  # type: ignore[arg-type]
    else:
        done.set_result(unit.result())
