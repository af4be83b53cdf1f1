"""SQLite's WAL checkpoints on a thread of their own instead of on the committing writer.

SQLite copies the write-ahead log back into the database (a checkpoint, with its fdatasync)
in the connection whose COMMIT takes the log past 1,000 pages: in a serving process that is
the group writer's thread, so the next batch of payments waits for the copy. A long-running
process instead turns the automatic checkpoint off on its connections and runs a PASSIVE
checkpoint here every ``interval``: PASSIVE never waits for readers or writers, and the
sqlite3 module lets go of the GIL while it runs, so the copy overlaps the payments instead of
delaying them. A checkpoint another process holds at that moment is simply skipped.

A passive checkpoint alone can starve: the log starts again from its beginning only when a
writer finds it wholly copied, and under a steady stream of commits a frame is always added
while the copy runs, so the log would grow without end. When the log still holds more than
``restart_frames`` after a passive checkpoint, a RESTART follows. A RESTART holds the write
lock while it copies what the passive one left (the commits made while it copied), syncs,
and waits for the readers of the log; every commit waits with it. So a second passive
checkpoint first copies most of that remainder without the lock, and the RESTART runs with no
busy handler, tried again in steps of half a millisecond for ``RESTART_PATIENCE``: SQLite's
handler sleeps 1, 2, 5 ms… between its tries, and a RESTART that met a reader slept that long
holding the write lock (measured: 12–24 ms per RESTART, four a second at saturation, the
group writer's ``BEGIN IMMEDIATE`` waiting behind each). Readers that never leave a gap would
let the log grow: past ``INSIST`` times ``restart_frames`` the RESTART waits for them, the
writer with it, as SQLite's own checkpoint would.

Each RESTART try runs with the process's own group writer held off (``writer_held_off``,
``GroupWriter.held_off``): the try never fails for meeting this process's write, and the
payments that arrive meanwhile wait on the event loop and are written there, together, once
it ends. Without it the loop found SQLite's lock taken, handed its batch to the writer
thread, and every later batch queued behind that thread's slower writes (at 600 payments/s,
five RESTARTs a second and a 10–25 ms queue behind each: docs/BENCHMARKS.md).

On Linux the thread runs ``NICENESS`` steps nicer than its process. A passive checkpoint
copies a fifth of a second's pages (3,000 at 600 payments/s, 15–30 ms) and, on a machine
whose cores are all busy, took CPU from the event loop: the loop's batches written while a
checkpoint ran (those over 3 ms) cost 1.1 ms a payment at the median against 0.7 ms
otherwise, and the slowest confirmations gathered around checkpoints. Nicer, the copy uses
what the loop leaves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

log = logging.getLogger("paycode.db")

CHECKPOINT_INTERVAL = 0.2
# SQLite's own automatic checkpoint starts at 1,000 pages.
RESTART_FRAMES = 1000
RESTART_PATIENCE = 0.05
RESTART_STEP = 0.0005
INSIST = 8
INSIST_TIMEOUT_MS = 5000
NICENESS = 10


class Checkpointer:
    def __init__(
        self,
        path: str,
        *,
        interval: float = CHECKPOINT_INTERVAL,
        restart_frames: int = RESTART_FRAMES,
        writer_held_off: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        self.path = path
        self._writer_held_off = writer_held_off
        self.interval = interval
        self.restart_frames = restart_frames
        self.checkpoints = 0
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)

    @property
    def thread_id(self) -> int | None:
        """The operating system's id of the checkpoint thread, once started."""
        return self._thread.native_id

    def start(self) -> None:
        self._thread.start()
        # Thread.start returns once the thread runs, its native id known.
        _run_nicer(self._thread.native_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        # No busy handler: its sleeps would hold the write lock (see above).
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=0
        )
        try:
            while not self._stop.wait(self.interval):
                try:
                    _, frames, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                    insist = frames > self.restart_frames * INSIST
                    if frames > self.restart_frames and self._restart(connection, insist=insist):
                        self.restarts += 1
                except sqlite3.Error as exc:
                    # Another process's checkpoint, a locked file: the next tick tries again.
                    log.debug("wal checkpoint skipped: %s", exc)
        finally:
            connection.close()

    def _restart(self, connection: sqlite3.Connection, *, insist: bool) -> bool:
        """Whether the log was started afresh, keeping the writer out as briefly as can be
        (see above): ``insist`` once the log has grown past patience."""
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if insist:
            connection.execute(f"PRAGMA busy_timeout={INSIST_TIMEOUT_MS}")
            try:
                with self._writer_held_off():
                    busy, _, _ = connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                connection.execute("PRAGMA busy_timeout=0")
            return not busy
        deadline = time.monotonic() + RESTART_PATIENCE
        while not self._stop.is_set():
            with self._writer_held_off():
                busy, _, _ = connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if not busy or time.monotonic() > deadline:
                return not busy
            time.sleep(RESTART_STEP)
        return False


def _run_nicer(thread_id: int | None) -> None:
    # Linux gives each thread a niceness of its own, set through its id; elsewhere that id is
    # no process's and the call could reach an unrelated one, so nothing is done.
    if thread_id is None or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        niceness = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, min(19, niceness + NICENESS))
