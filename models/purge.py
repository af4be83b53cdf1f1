"""Rows whose window has passed, removed so that no table grows for ever.

An ``Idempotency-Key`` is honoured for 24 hours (spec §2) and the login and code-lookup limiters
count failures over 15 minutes; past that nothing reads those rows again. A webhook delivery
that is over (succeeded, or failed after its last retry) stays 30 days for the shop to look
back on, then goes too; a pending one is never removed. A pass deletes them
in small batches, each its own short transaction, so a payment never waits behind a long
delete (on SQLite the payments and the batch take the write lock in turn; the
deliveries' batches take the queue's own file's, models/db.py). Only
rows older than their window are touched: a retry within 24 hours still replays.

On PostgreSQL many processes share the database; a session advisory lock lets one of them
purge at a time (the others skip the pass), and the batches skip rows another transaction has
locked rather than wait for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, TextClause, bindparam, text
from sqlmodel.sql.sqltypes import UTCDateTime

from models.accounts import LOGIN_WINDOW
from models.clock import utcnow
from models.db import Database
from models.idempotency import TTL
from models.ratelimit import WINDOW as LOOKUP_WINDOW
from models.webhooks import FAILED, QUEUE_TABLES, SUCCEEDED

BATCH = 500
# An arbitrary constant that names this lock among the database's advisory locks.
ADVISORY_LOCK_KEY = 0x70617963_70757267


@dataclass(frozen=True, slots=True)
class Window:
    table: str
    keep: timedelta
    # Only rows that also match this SQL condition go (constant text, never user input).
    only: str = ""


DELIVERIES_KEPT = timedelta(days=30)

WINDOWS = (
    Window("idempotency_record", TTL),
    Window("login_failure", LOGIN_WINDOW),
    Window("lookup_failure", LOOKUP_WINDOW),
    Window("webhook_delivery", DELIVERIES_KEPT, f"status IN ('{SUCCEEDED}', '{FAILED}')"),
)

# The columns' own type, so a bound or read time is stored and read as theirs are.
_MOMENT = UTCDateTime()


def _batch_statement(window: Window, is_sqlite: bool) -> TextClause:
    table = window.table
    expired = "created_at < :cutoff" + (f" AND {window.only}" if window.only else "")
    if is_sqlite:
        sql = (
            f"DELETE FROM {table} WHERE rowid IN"
            f" (SELECT rowid FROM {table} WHERE {expired} LIMIT :batch)"
        )
    else:
        sql = (
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
            f"SELECT ctid FROM {table} WHERE {expired}"
            " LIMIT :batch FOR UPDATE SKIP LOCKED))"
        )
    return text(sql).bindparams(bindparam("cutoff", type_=_MOMENT))


def delete_batch(connection: Connection, window: Window, now: datetime, batch: int) -> int:
    """Delete up to ``batch`` rows of the table older than its window, in one transaction."""
    statement = _batch_statement(window, connection.dialect.name == "sqlite")
    with connection.begin():
        result = connection.execute(statement, {"cutoff": now - window.keep, "batch": batch})
    return int(result.rowcount)


Connect = Callable[[], AbstractContextManager[Connection]]


def _drain(
    connect: Connect, connect_queue: Connect, now: datetime, batch: int, pause: float
) -> dict[str, int]:
    removed = {}
    for window in WINDOWS:
        count = 0
        while True:
            with (connect_queue if window.table in QUEUE_TABLES else connect)() as connection:
                deleted = delete_batch(connection, window, now, batch)
            count += deleted
            if deleted < batch:
                break
            time.sleep(pause)
        removed[window.table] = count
    return removed


def purge(
    db: Database, *, batch: int = BATCH, pause: float = 0.01, now: datetime | None = None
) -> dict[str, int] | None:
    """One pass over every table: rows removed by table, or None when another process holds
    the purge lock (PostgreSQL) and this pass was skipped. ``pause`` is the rest between two
    batches of one table, which lets the payments' transactions through."""
    moment = now or utcnow()
    if db.is_sqlite:
        # A writer connection taken per batch, never held: the payments take the lock between.
        return _drain(db.writer.connect, db.queue_writer.connect, moment, batch, pause)
    with db.writer.connect() as held:
        locked = held.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
        ).scalar()
        held.commit()
        if not locked:
            return None
        try:
            return _drain(
                lambda: nullcontext(held), lambda: nullcontext(held), moment, batch, pause
            )
        finally:
            held.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
            held.commit()


def oldest_idempotency_age(db: Database, now: datetime | None = None) -> float:
    """Seconds since the oldest stored Idempotency-Key response was made (0 with none)."""
    with db.reader.connect() as connection:
        oldest = connection.execute(
            text("SELECT MIN(created_at) AS oldest FROM idempotency_record").columns(oldest=_MOMENT)
        ).scalar()
    if oldest is None:
        return 0.0
    return max(0.0, ((now or utcnow()) - oldest).total_seconds())
