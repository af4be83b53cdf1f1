"""The engine from a URL, and the unit of work.

SQLite: WAL, foreign keys on, and write transactions opened with ``BEGIN IMMEDIATE`` on a
single pooled connection, so a process's writers queue in the pool instead of spinning on
SQLite's busy handler; another process's write lock is waited for in steps of a fraction of
a millisecond (``sql.begin_immediate``). Reads use their own pool and never block on writers.
The webhook delivery queue (models/webhook_queue.py) writes a row per delivery, several a
payment, and on SQLite its writes would queue for the payments' one write lock: its tables
live in a database file of their own beside the main one (:func:`queue_path`), with a write
lock of its own. The readers see both (the queue's file attached read-only), so a read may
join their tables; a writer sees only its own file, since ``BEGIN IMMEDIATE`` opens a
transaction on every attached file too: the payments' writer would hold a snapshot of the
queue's file, and the queue's writer one of the database, for all of each transaction,
which the other file's checkpoints wait for (with that file's writers waiting behind them).
PostgreSQL: one pool for worker threads; writers lock the rows they change (``SELECT … FOR
NO KEY UPDATE``) in ascending id order. A second pool, of the same driver in its asyncio mode,
serves the payment on the event loop itself (:meth:`Database.autocommit_on_loop`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from psycopg.pq import ConnStatus
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel import Session

from models import sql
from models.checkpoint import Checkpointer
from models.group import GroupWriter
from models.loop_pool import LoopPool, quiet

GROUP_SLOTS = 16
# The queue's file as the readers of the database see it.
QUEUE_SCHEMA = "webhooks"


def normalize_url(url: str) -> str:
    """Pick the driver this project ships: psycopg 3 for PostgreSQL, pysqlite for SQLite."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _in_memory(url: str) -> bool:
    return make_url(url).database in (None, "", ":memory:")


def queue_path(url: str) -> Path | None:
    """SQLite: the file of the webhook delivery queue, beside the database's own
    (``paycode.db`` → ``paycode.webhooks.db``); None where the queue shares the database
    (PostgreSQL, an in-memory SQLite database)."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or _in_memory(url):
        return None
    assert parsed.database is not None
    path = Path(parsed.database)
    return path.with_name(f"{path.stem}.{QUEUE_SCHEMA}{path.suffix}")


def attach(
    dbapi_connection: sqlite3.Connection, path: Path, schema: str, *, read_only: bool
) -> None:
    """Attach another database file under ``schema``. Read-only, ``BEGIN IMMEDIATE`` leaves
    its write lock alone; the file is created (empty) if it is not there yet, since a
    read-only attach cannot create it."""
    if read_only and not path.exists():
        sqlite3.connect(path).close()
    mode = "?mode=ro" if read_only else ""
    target = f"file:{quote(str(path.resolve()))}{mode}"
    dbapi_connection.execute(f"ATTACH DATABASE ? AS {schema}", (target,))


def _sqlite_engine(
    url: str,
    *,
    immediate: bool,
    pool_size: int,
    pool_timeout: float,
    autocheckpoint: bool,
    attached: tuple[Path, str] | None = None,
) -> Engine:
    memory = _in_memory(url)
    engine = create_engine(
        url,
        # uri: the attached file is named by a URI, which says read-only.
        connect_args={"check_same_thread": False, "timeout": 30, "uri": True},
        poolclass=NullPool if memory else None,
        **(
            {}
            if memory
            else {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": pool_timeout}
        ),
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so BEGIN is ours to issue.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # A unit of a group commit runs in a savepoint, whose journal of the pages it touches
        # (a payment's dozen indexes: 60-100 KiB) passes SQLite's 64 KiB spill threshold and
        # would go to a new temporary file for every unit: an open, two dozen writes and an
        # unlink per payment. In memory it is a copy of the pages the unit holds anyway.
        cursor.execute("PRAGMA temp_store=MEMORY")
        if not autocheckpoint:
            # models/checkpoint.py's thread checkpoints instead of the committing writer.
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        # The writer waits for the write lock in sql.begin_immediate, not in SQLite's handler.
        cursor.execute("PRAGMA busy_timeout=0" if immediate else "PRAGMA busy_timeout=30000")
        cursor.close()
        if attached is not None:
            attach(dbapi_connection, *attached, read_only=True)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if immediate:
            sql.begin_immediate(connection.connection.driver_connection)
        else:
            connection.exec_driver_sql("BEGIN")

    return engine


def _alive_on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """The loop pool's liveness check, in place of pre-ping's round trip: the server's close
    of a connection that sat in the pool (a restart, an idle timeout, a terminated backend)
    is waiting in its socket, and asking whether there is any costs one non-blocking poll. A
    dead one makes every pooled connection suspect (a restart closes them all), so the pool
    drops them all and SQLAlchemy connects afresh."""
    pgconn = dbapi_connection.driver_connection.pgconn
    if pgconn.status != ConnStatus.OK or not quiet(pgconn.socket):
        raise InvalidatePoolError()


class Database:
    """Owns the engines of one database and hands out transactions."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        pool_timeout: float | None = None,
        own_checkpoints: bool = False,
        own_queue_checkpoints: bool = False,
    ):
        """``own_checkpoints``: a long-running process that writes the database (a server)
        checkpoints SQLite's WAL on a thread of its own (models/checkpoint.py) rather than in
        the connection whose COMMIT fills it; short commands keep SQLite's automatic
        checkpoint. ``own_queue_checkpoints``: the same for the webhook queue's file, by the
        process that writes it most (``paycode webhooks``)."""
        self.url = normalize_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        self.pool_size = pool_size
        # The group commit of the hot path's writes (SQLite only: there is one writer anyway).
        self.group: GroupWriter | None = None
        self.loop_engine: AsyncEngine | None = None
        self.money_pool: LoopPool | None = None
        self.checkpointer: Checkpointer | None = None
        self.queue_checkpointer: Checkpointer | None = None
        self.queue_file = queue_path(self.url)
        if self.dialect == "sqlite":
            own_checkpoints = own_checkpoints and not _in_memory(self.url)
            timeout = pool_timeout or 60
            queue = None if self.queue_file is None else (self.queue_file, QUEUE_SCHEMA)
            # Two writer connections: one held by the group commit, one for every other write
            # (SQLite's lock orders them).
            self.writer = _sqlite_engine(
                self.url,
                immediate=True,
                pool_size=2,
                pool_timeout=timeout,
                autocheckpoint=not own_checkpoints,
            )
            self.reader = _sqlite_engine(
                self.url,
                immediate=False,
                pool_size=pool_size,
                pool_timeout=timeout,
                autocheckpoint=not own_checkpoints,
                attached=queue,
            )
            self.queue_writer = self.writer
            if self.queue_file is not None:
                self.queue_writer = _sqlite_engine(
                    f"sqlite:///{self.queue_file}",
                    immediate=True,
                    pool_size=1,
                    pool_timeout=timeout,
                    autocheckpoint=not own_queue_checkpoints,
                )
                if own_queue_checkpoints:
                    self.queue_checkpointer = Checkpointer(str(self.queue_file))
                    self.queue_checkpointer.start()
            self.group = GroupWriter(self.writer)
            if own_checkpoints:
                path = make_url(self.url).database
                assert path is not None
                self.checkpointer = Checkpointer(path, writer_held_off=self.group.held_off)
                self.checkpointer.start()
        elif self.dialect == "postgresql":
            pool: dict[str, Any] = {
                "pool_size": pool_size,
                "max_overflow": pool_size,
                "pool_timeout": pool_timeout or 30,
            }
            self.writer = create_engine(self.url, pool_pre_ping=True, **pool)
            self.reader = self.writer
            self.queue_writer = self.writer
            # Connects on first use, so a process that never pays on the loop (the CLI, a
            # migration) opens nothing; its connections belong to the loop that made them.
            self.loop_engine = create_async_engine(self.url, **pool)
            event.listen(self.loop_engine.sync_engine, "checkout", _alive_on_checkout)
            self.money_pool = LoopPool(self.url, size=pool_size * 2, timeout=pool_timeout or 30)
        else:
            raise ValueError(f"unsupported database URL scheme: {self.dialect}")

    @property
    def write_slots(self) -> int:
        """Write units worth running at once: on SQLite, enough to fill a group commit's
        batch while the previous one commits; on PostgreSQL, the pool's steady connections."""
        return GROUP_SLOTS if self.is_sqlite else self.pool_size

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with Session(self.writer, expire_on_commit=False) as session, session.begin():
            yield session

    @property
    def queue_apart(self) -> bool:
        """Whether the webhook queue's tables are written through a database file, and a
        write lock, of their own (SQLite on a file)."""
        return self.queue_writer is not self.writer

    @contextmanager
    def queue_write(self) -> Iterator[Session]:
        """A write transaction of the webhook queue's tables (models/webhooks.py
        ``QUEUE_TABLES``): where the queue is apart, the only tables it sees."""
        with Session(self.queue_writer, expire_on_commit=False) as session, session.begin():
            yield session

    def raw_queue_write(self) -> AbstractContextManager[sql.Tx]:
        return sql.unit(self.queue_writer, write=True)

    @contextmanager
    def raw_queue_unit(self) -> Iterator[tuple[sql.Tx, sql.Tx]]:
        """A write of the queue's tables, and what reads the others in it: where the queue
        has a file of its own, a reader's statements, each its own short snapshot, so that
        the write holds no snapshot of the database for its checkpoints to wait for."""
        with self.raw_queue_write() as tx:
            if not self.queue_apart:
                yield tx, tx
                return
            with self.raw_read() as main:
                yield tx, main

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.reader, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """A read transaction whose statements all see one moment of the database: a long
        read in several queries (an export's pages) whose parts agree with each other.
        SQLite's read transactions are snapshots already."""
        with Session(self.reader, expire_on_commit=False) as session, session.begin():
            if not self.is_sqlite:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session

    def raw_write(self) -> AbstractContextManager[sql.Tx]:
        """``write`` without the ORM session, for the hot paths' hand-written SQL."""
        return sql.unit(self.writer, write=True)

    def raw_read(self) -> AbstractContextManager[sql.Tx]:
        return sql.unit(self.reader, write=False)

    @property
    def _on_loop(self) -> Engine:
        assert self.loop_engine is not None, "the loop's pool is PostgreSQL's"
        return self.loop_engine.sync_engine

    def autocommit_on_loop(self) -> AbstractContextManager[sql.Tx]:
        """PostgreSQL, for a unit run by ``app.http.on_loop`` (the payments): each statement
        its own transaction, each driver wait an await of the event loop, on the money
        path's asyncpg pool (``models.loop_pool``)."""
        assert self.money_pool is not None, "the money path's pool is PostgreSQL's"
        return self.money_pool.unit()

    def transaction_on_loop(self) -> AbstractContextManager[sql.Tx]:
        """PostgreSQL: one transaction on the money path's asyncpg pool, for a unit run by
        ``app.http.on_loop`` (code issuance, a refusal recorded under its key)."""
        assert self.money_pool is not None, "the money path's pool is PostgreSQL's"
        return self.money_pool.unit(transaction=True)

    def raw_write_on_loop(self) -> AbstractContextManager[sql.Tx]:
        """PostgreSQL: ``raw_write`` for a unit run by ``app.http.on_loop``."""
        return sql.unit(self._on_loop, write=True)

    def raw_read_on_loop(self) -> AbstractContextManager[sql.Tx]:
        """PostgreSQL: ``raw_read`` for a unit run by ``app.http.on_loop``."""
        return sql.unit(self._on_loop, write=False)

    async def dispose_loop_engine(self) -> None:
        """Close the loop's pools; on the loop that used them (their connections are bound
        to it)."""
        if self.loop_engine is not None:
            await self.loop_engine.dispose()
        if self.money_pool is not None:
            await self.money_pool.close()

    def dispose(self) -> None:
        if self.group is not None:
            self.group.close()
        for checkpointer in (self.checkpointer, self.queue_checkpointer):
            if checkpointer is not None:
                checkpointer.stop()
        self.writer.dispose()
        if self.queue_apart:
            self.queue_writer.dispose()
        if self.reader is not self.writer:
            self.reader.dispose()
