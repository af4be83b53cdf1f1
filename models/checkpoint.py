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
while the copy runs, so the log would grow without end. When a passive checkpoint leaves more
than ``restart_frames`` in the log, a RESTART checkpoint follows: it waits for the writer's
current transaction, copies what the passive one left (little, since it just ran), and makes
the next commit start the log afresh. The writer waits for that remainder only.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("paycode.db")

CHECKPOINT_INTERVAL = 0.2
# SQLite's own automatic checkpoint starts at 1,000 pages.
RESTART_FRAMES = 1000


class Checkpointer:
    def __init__(
        self,
        path: str,
        *,
        interval: float = CHECKPOINT_INTERVAL,
        restart_frames: int = RESTART_FRAMES,
    ) -> None:
        self.path = path
        self.interval = interval
        self.restart_frames = restart_frames
        self.checkpoints = 0
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        # The busy timeout bounds how long a RESTART waits for the writer's transaction.
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=5
        )
        try:
            while not self._stop.wait(self.interval):
                try:
                    _, frames, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                    if frames > self.restart_frames:
                        connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                        self.restarts += 1
                except sqlite3.Error as exc:
                    # Another process's checkpoint, a locked file: the next tick tries again.
                    log.debug("wal checkpoint skipped: %s", exc)
        finally:
            connection.close()
