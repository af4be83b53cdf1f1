"""Alembic is the only way the schema changes: `paycode migrate` takes an EMPTY database to
head and back to base, on PostgreSQL and SQLite, and head matches the models exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

import models  # noqa: F401  (registers every table on the metadata)
from app.cli import main
from models.db import normalize_url
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


def tables(url: str) -> set[str]:
    engine = create_engine(normalize_url(url), poolclass=NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def schema_diff(url: str) -> list[object]:
    engine = create_engine(normalize_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, SQLModel.metadata))
    finally:
        engine.dispose()


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
