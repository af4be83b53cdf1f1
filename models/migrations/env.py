"""Alembic environment: the URL comes from the caller (models.migrate) or PAYCODE_DATABASE_URL."""

from __future__ import annotations

import os
from typing import Any

from alembic import context
from sqlalchemy import create_engine, event, pool, text
from sqlmodel import SQLModel

import models  # noqa: F401  (registers every table on the metadata)
from models.db import QUEUE_SCHEMA, attach, normalize_url, queue_path

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
    queue_file = queue_path(url)
    if queue_file is not None:
        # SQLite: the webhook queue's own file, written by the migrations as schema
        # "webhooks" (models/db.py).
        @event.listens_for(engine, "connect")
        def _attach_queue(dbapi_connection: Any, _record: Any) -> None:
            attach(dbapi_connection, queue_file, QUEUE_SCHEMA, read_only=False)
            dbapi_connection.execute(f"PRAGMA {QUEUE_SCHEMA}.journal_mode=WAL")

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
