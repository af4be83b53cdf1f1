"""The hand-written SQL of the hot paths stores what SQLAlchemy's types store, so rows written
by either side read the same through the other."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import DateTime, create_engine, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import OperationalError

from models import codes, payments, sql
from models.db import Database


def test_a_code_row_has_the_code_table_columns_in_order() -> None:
    """CodeRow is built from the row by position: its fields must be the table's columns."""
    fields = [field.name for field in dataclasses.fields(codes.CodeRow)]
    assert fields == [column.name for column in codes.Code.__table__.columns]  # type: ignore[attr-defined]


def test_the_payment_insert_names_every_payment_column() -> None:
    columns = [column.name for column in payments.Payment.__table__.columns]  # type: ignore[attr-defined]
    assert columns == payments._PAYMENT_FIELDS


def test_a_moment_is_stored_on_sqlite_as_sqlalchemy_stores_it(tmp_path: Path) -> None:
    """The same text as SQLAlchemy's SQLite DATETIME (UTC, no offset, microseconds), from
    any aware time; read back as the same aware UTC time."""
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    dialect = sqlite.dialect()
    process = DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    with sql.unit(engine, write=True) as tx:
        for moment in (
            datetime(2026, 11, 27, 5, 2, 55, 533968, tzinfo=UTC),
            datetime(2026, 1, 1, tzinfo=UTC),
            datetime(2026, 6, 1, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=8))),
        ):
            stored = tx.moment(moment)
            assert stored == process(moment.astimezone(UTC).replace(tzinfo=None))
            assert tx.read_moment(stored) == moment
    engine.dispose()


def test_a_failed_unit_rolls_back_and_a_driver_error_is_sqlalchemys(tmp_path: Path) -> None:
    """A driver error surfaces as SQLAlchemy's class (the HTTP handlers map those), and the
    unit's writes are gone."""
    from sqlalchemy.exc import IntegrityError

    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    try:
        with sql.unit(engine, write=True) as tx:
            tx.run("INSERT INTO t (id) VALUES (?)", (1,))
            tx.run("INSERT INTO t (id) VALUES (?)", (1,))
    except IntegrityError:
        pass
    else:
        raise AssertionError("a duplicate key must fail")
    with sql.unit(engine, write=False) as tx:
        assert tx.all("SELECT id FROM t") == []
    engine.dispose()


def test_a_refused_connect_is_sqlalchemys_operational_error() -> None:
    """The pool hands a refused connect through as the driver's error; the unit raises
    SQLAlchemy's class, which the app answers with 503 (not 500)."""
    from sqlalchemy.exc import OperationalError

    from models.db import normalize_url
    from tests.server import free_port

    engine = create_engine(normalize_url(f"postgresql://nobody@127.0.0.1:{free_port()}/none"))
    try:
        with sql.unit(engine, write=False):
            raise AssertionError("no server listens there")
    except OperationalError:
        pass
    finally:
        engine.dispose()


def test_a_writer_takes_the_write_lock_as_soon_as_another_process_lets_it_go(
    tmp_path: Path,
) -> None:
    """Another connection (another process: ``paycode webhooks``, the CLI) holds SQLite's
    write lock: the writer waits for it, with neither SQLite's ``database is locked`` nor
    its busy handler's sleeps (by 0.45 s they are 100 ms apart), and begins within a few
    milliseconds of the release."""
    path = tmp_path / "lock.db"
    db = Database(f"sqlite:///{path}")
    try:
        with db.raw_write() as tx:
            tx.run("CREATE TABLE t (x INTEGER)")
        holding, released = threading.Event(), threading.Event()
        let_go_at: list[float] = []

        def hold() -> None:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            holding.set()
            released.wait(5)
            other.execute("COMMIT")
            let_go_at.append(time.monotonic())
            other.close()

        holder = threading.Thread(target=hold)
        holder.start()
        holding.wait(5)
        threading.Timer(0.45, released.set).start()
        with db.raw_write() as tx:
            began = time.monotonic()
            tx.run("INSERT INTO t VALUES (1)")
        holder.join(5)
        assert let_go_at and 0 <= began - let_go_at[0] < 0.04
    finally:
        db.dispose()


def test_a_write_lock_never_let_go_is_sqlalchemys_error_on_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the wait, the ORM session and the hand-written unit both raise SQLAlchemy's
    OperationalError: the class the HTTP layer answers with 503, not a driver error (500)."""
    path = tmp_path / "locked.db"
    db = Database(f"sqlite:///{path}")
    try:
        with db.raw_write() as tx:
            tx.run("CREATE TABLE t (x INTEGER)")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        monkeypatch.setattr(sql, "WRITE_LOCK_TIMEOUT", 0.05)
        with pytest.raises(OperationalError), db.write() as session:
            session.exec(text("INSERT INTO t VALUES (1)"))  # type: ignore[call-overload]
        with pytest.raises(OperationalError), db.raw_write() as tx:
            tx.run("INSERT INTO t VALUES (1)")
        other.execute("ROLLBACK")
        other.close()
    finally:
        db.dispose()
