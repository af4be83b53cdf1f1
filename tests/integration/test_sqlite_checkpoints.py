"""A long-running process checkpoints SQLite's write-ahead log on a thread of its own: its
connections never checkpoint after a COMMIT, and the log is still copied back, so it does
not grow without bound under a steady stream of commits. A short command keeps SQLite's
automatic checkpoint."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import make_url

from models.checkpoint import INSIST, NICENESS, RESTART_FRAMES, Checkpointer
from models.db import Database
from tests.services import SqliteFactory

ROWS = 100_000
BATCH = 1_000


def _wal_pages(path: str) -> int:
    wal = Path(path + "-wal")
    return wal.stat().st_size // 4096 if wal.exists() else 0


def _insert_rows(db: Database, start: int, count: int) -> None:
    with db.raw_write() as tx:
        tx.run_many(
            "INSERT INTO login_failure (id, handle, client, created_at)"
            " VALUES (?, ?, ?, CURRENT_TIMESTAMP)",
            [(f"lf_{i:08d}", "h" * 99, "c" * 99) for i in range(start, start + count)],
        )


def test_the_process_thread_checkpoints_and_its_connections_never_do(
    sqlite_factory: SqliteFactory,
) -> None:
    url = sqlite_factory.create()
    path = make_url(url).database
    assert path is not None
    db = Database(url, own_checkpoints=True)
    try:
        assert db.checkpointer is not None
        with db.raw_read() as tx:
            assert tx.one("PRAGMA wal_autocheckpoint") == (0,)
        # Far more pages than the log may hold before the checkpointer insists on starting
        # it afresh, written over many of the thread's intervals.
        for start in range(0, ROWS, BATCH):
            _insert_rows(db, start, BATCH)
            time.sleep(0.01)
        # The log was copied back and started afresh as it went, though commits never paused
        # for a passive checkpoint to finish: it never held more than the point where the
        # checkpointer insists, and a tick's commits (the file keeps its largest size), while
        # the database outgrew that.
        assert db.checkpointer.restarts >= 2
        most = (INSIST + 1) * RESTART_FRAMES
        assert _wal_pages(path) < most < Path(path).stat().st_size // 4096
        with sqlite3.connect(path) as probe:
            assert probe.execute("SELECT count(*) FROM login_failure").fetchone() == (ROWS,)
    finally:
        db.dispose()
    assert not db.checkpointer._thread.is_alive()


def test_a_restart_that_meets_a_reader_gives_the_write_lock_back(
    sqlite_factory: SqliteFactory,
) -> None:
    """A reader's open snapshot keeps the log from starting afresh. The RESTART that finds it
    must let the writers on at once, not sleep in SQLite's busy handler holding their lock
    until the reader leaves; once it has, the log starts afresh."""
    url = sqlite_factory.create()
    path = make_url(url).database
    assert path is not None
    db = Database(url, own_checkpoints=True)
    # The database's first connection turns the log on.
    with db.raw_read() as tx:
        assert tx.one("PRAGMA journal_mode") == ("wal",)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        assert db.checkpointer is not None
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM login_failure").fetchone()
        slowest_begin = 0.0
        start = 0
        # Past the threshold, short of the point where the checkpointer insists.
        while _wal_pages(path) < 3 * RESTART_FRAMES:
            began = time.monotonic()
            _insert_rows(db, start, 100)
            slowest_begin = max(slowest_begin, time.monotonic() - began)
            start += 100
            time.sleep(0.01)
        assert _wal_pages(path) < INSIST * RESTART_FRAMES
        # A RESTART waiting for the reader would hold the lock for its busy timeout (5 s).
        assert slowest_begin < 1.0
        restarts = db.checkpointer.restarts
        reader.execute("COMMIT")
        deadline = time.monotonic() + 10
        while db.checkpointer.restarts == restarts and time.monotonic() < deadline:
            with db.raw_write() as tx:
                tx.run("DELETE FROM login_failure WHERE id = ?", (f"lf_{start:08d}",))
            time.sleep(0.05)
        assert db.checkpointer.restarts > restarts
    finally:
        reader.close()
        db.dispose()


def test_a_short_command_keeps_sqlites_own_checkpoint(sqlite_factory: SqliteFactory) -> None:
    db = Database(sqlite_factory.create(), pool_size=1)
    try:
        assert db.checkpointer is None
        with db.raw_read() as tx:
            assert tx.one("PRAGMA wal_autocheckpoint") == (1000,)
    finally:
        db.dispose()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_the_checkpoint_thread_runs_nicer_than_its_process(tmp_path: Path) -> None:
    """The copy takes what the event loop leaves: the thread alone is nicer, the process (and
    so the loop) keeps its own niceness."""
    path = str(tmp_path / "nice.db")
    sqlite3.connect(path).close()
    before = os.getpriority(os.PRIO_PROCESS, 0)
    checkpointer = Checkpointer(path, interval=0.05)
    checkpointer.start()
    try:
        assert checkpointer.thread_id is not None
        thread_niceness = os.getpriority(os.PRIO_PROCESS, checkpointer.thread_id)
        assert thread_niceness == min(19, before + NICENESS)
        assert os.getpriority(os.PRIO_PROCESS, 0) == before
    finally:
        checkpointer.stop()
