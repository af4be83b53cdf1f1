"""Alembic is the only way the schema changes: `paycode migrate` takes an EMPTY database to
head and back to base, on PostgreSQL and SQLite, and head matches the models exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

import models  # noqa: F401  (registers every table on the metadata)
from app.cli import main
from models.db import normalize_url, queue_path
from models.webhooks import QUEUE_TABLES
from tests.services import PostgresFactory, unavailable


@pytest.fixture(autouse=True)
def restore_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # `paycode migrate --database-url` writes the flag back to the environment.
    monkeypatch.setenv("PAYCODE_DATABASE_URL", "")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(
    request: pytest.FixtureRequest, tmp_path: Path, pg_factory: PostgresFactory
) -> Iterator[str]:
    """A database with no tables at all, not even alembic_version."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    if not pg_factory.available():
        unavailable("PostgreSQL is not reachable on 127.0.0.1:5432")
    url = pg_factory.create(migrated=False)
    yield url
    pg_factory.drop(url)


def _files(url: str) -> list[tuple[str, Callable[[str], bool]]]:
    """The database's files and which model tables each holds: on SQLite the webhook queue's
    tables are in a file of their own."""
    queue_file = queue_path(url)
    if queue_file is None:
        return [(url, lambda _name: True)]
    return [
        (url, lambda name: name not in QUEUE_TABLES),
        (f"sqlite:///{queue_file}", lambda name: name in QUEUE_TABLES),
    ]


def tables(url: str) -> set[str]:
    found: set[str] = set()
    for file_url, _holds in _files(url):
        engine = create_engine(normalize_url(file_url), poolclass=NullPool)
        try:
            found |= set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
    return found


def schema_diff(url: str) -> list[object]:
    diff: list[object] = []
    for file_url, holds in _files(url):
        engine = create_engine(normalize_url(file_url), poolclass=NullPool)

        def include(obj: object, name: str | None, type_: str, *_: object) -> bool:
            return type_ != "table" or (name is not None and holds(name))  # noqa: B023

        try:
            with engine.connect() as conn:
                options = {"compare_type": True, "include_object": include}
                context = MigrationContext.configure(conn, opts=options)
                diff += compare_metadata(context, SQLModel.metadata)
        finally:
            engine.dispose()
    return diff


def test_migrate_up_from_empty_and_down_to_base(empty_database: str) -> None:
    """base → head creates every model table and nothing differs from the models (alembic's
    autogenerate comparison is empty); head → base leaves no table but alembic_version; and
    head can be reached again after that."""
    model_tables = set(SQLModel.metadata.tables)
    assert tables(empty_database) == set()

    assert main(["migrate", "--database-url", empty_database]) == 0
    assert tables(empty_database) == model_tables | {"alembic_version"}
    assert schema_diff(empty_database) == []

    assert main(["migrate", "--downgrade", "--database-url", empty_database]) == 0
    assert tables(empty_database) == {"alembic_version"}

    assert main(["migrate", "--database-url", empty_database]) == 0
    assert tables(empty_database) == model_tables | {"alembic_version"}
    assert schema_diff(empty_database) == []


def test_migrate_is_idempotent_at_head(empty_database: str) -> None:
    """Running `paycode migrate` on a database already at head changes nothing (every
    `paycode serve` start and every replica runs it)."""
    assert main(["migrate", "--database-url", empty_database]) == 0
    assert main(["migrate", "--database-url", empty_database]) == 0
    assert schema_diff(empty_database) == []


def _run_sql(url: str, statements: list[str]) -> list[list[tuple[object, ...]]]:
    """Each statement's rows, read by a connection that sees the webhook queue's file."""
    from models.db import Database

    db = Database(url)
    try:
        with db.read() as session:
            return [[tuple(r) for r in session.execute(text(s))] for s in statements]
    finally:
        db.dispose()


def test_the_webhook_queue_moves_apart_and_back_with_its_rows(empty_database: str) -> None:
    """0006 moves an endpoint's fan-out progress and failing clock to the queue's own row and,
    on SQLite, the deliveries and flights to the queue's own file; its downgrade brings them
    all back. Nothing owed is lost either way."""
    url = empty_database
    assert main(["migrate", "--revision", "0005", "--database-url", url]) == 0
    engine = create_engine(normalize_url(url), poolclass=NullPool)
    at = "2026-11-01 10:00:00"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO account (id, kind, handle, display_name, balance, last_seq,"
                " created_at) VALUES ('acc_1', 'user', 'shop', 'Shop', 0, 7, :at)"
            ),
            {"at": at},
        )
        conn.execute(
            text(
                "INSERT INTO webhook_endpoint (id, account_id, url, events, enabled, secret,"
                " cursor_seq, failing_since, created_at, updated_at) VALUES ('whk_1', 'acc_1',"
                " 'https://pos.example/hook', '[]', :on, 'whsec_x', 7, :late, :at, :at)"
            ),
            {"on": True, "at": at, "late": "2026-11-02 10:00:00"},
        )
        conn.execute(
            text(
                "INSERT INTO webhook_delivery (id, webhook_id, account_id, type, seq, status,"
                " attempts, next_attempt_at, created_at, attempt_log) VALUES ('msg_1', 'whk_1',"
                " 'acc_1', 'payment.succeeded', 7, 'pending', 1, :at, :at, '[]')"
            ),
            {"at": at},
        )
        conn.execute(
            text(
                "INSERT INTO webhook_flight (token, started_at, lease_until, deliveries)"
                " VALUES ('tok', :at, :at, '[]')"
            ),
            {"at": at},
        )
    engine.dispose()

    assert main(["migrate", "--database-url", url]) == 0
    endpoint, cursor, deliveries, flights = _run_sql(
        url,
        [
            "SELECT start_seq, enabled_at = created_at FROM webhook_endpoint",
            "SELECT webhook_id, seq, failing_since IS NOT NULL FROM webhook_cursor",
            "SELECT id, status FROM webhook_delivery",
            "SELECT token FROM webhook_flight",
        ],
    )
    assert endpoint == [(7, True)]
    assert cursor == [("whk_1", 7, True)]
    assert deliveries == [("msg_1", "pending")]
    assert flights == [("tok",)]

    assert main(["migrate", "--downgrade", "--revision", "0005", "--database-url", url]) == 0
    engine = create_engine(normalize_url(url), poolclass=NullPool)
    with engine.connect() as conn:
        read = [
            [tuple(r) for r in conn.execute(text(s))]
            for s in (
                "SELECT cursor_seq, failing_since IS NOT NULL FROM webhook_endpoint",
                "SELECT id FROM webhook_delivery",
                "SELECT token FROM webhook_flight",
            )
        ]
    engine.dispose()
    assert read == [[(7, True)], [("msg_1",)], [("tok",)]]
    assert main(["migrate", "--database-url", url]) == 0
    assert schema_diff(url) == []
