"""Alembic environment: the URL comes from the caller (models.migrate) or PAYCODE_DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool, text
from sqlmodel import SQLModel

import models  # noqa: F401  (registers every table on the metadata)
from models.db import normalize_url

config = context.config
url = config.attributes.get("database_url") or os.environ.get(
    "PAYCODE_DATABASE_URL", "sqlite:///./paycode.db"
)
target_metadata = SQLModel.metadata
# Any fixed 64-bit number shared by every paycode process: the migration's advisory lock.
MIGRATION_LOCK = 0x70617963_6F6465


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(normalize_url(url), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":  # type: ignore[attr-defined]
            # Replicas starting together on an empty database take turns; the later ones find
            # the schema at head and do nothing.
            connection.execute(  # type: ignore[attr-defined]
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
            )
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=normalize_url(url), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
