"""The webhook queue's tables on their own: on SQLite in a file of their own

The fan-out's progress (``cursor_seq``) and the failing clock move from ``webhook_endpoint``
to ``webhook_cursor``, the queue's own row per endpoint; the endpoint keeps ``start_seq``
(where its deliveries begin: set when it is created or enabled again) and ``enabled_at``.
On SQLite ``webhook_cursor``, ``webhook_delivery`` and ``webhook_flight`` live in the
database file attached as ``webhooks`` (models/db.py), so that the queue's writes never wait
for, nor hold, the payments' write lock; a foreign key cannot cross files, and the delivery's
one to its endpoint goes on both databases.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 19:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUE = "webhooks"
DUE = sa.text("status = 'pending'")
DELIVERY_COLUMNS = (
    "id, webhook_id, account_id, type, seq, status, attempts, last_status_code, last_error,"
    " next_attempt_at, lease_token, lease_until, created_at, delivered_at, attempt_log"
)


def _queue_schema() -> str | None:
    """ "webhooks" where the queue has a file of its own (migrations/env.py attached it)."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return None
    attached = {row[1] for row in bind.exec_driver_sql("PRAGMA database_list")}
    return QUEUE if QUEUE in attached else None


def _id(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _moment() -> sqlmodel.sql.sqltypes.UTCDateTime:
    return sqlmodel.sql.sqltypes.UTCDateTime()


def _create_delivery_tables(schema: str | None) -> None:
    op.create_table(
        "webhook_delivery",
        sa.Column("id", _id(40), nullable=False),
        sa.Column("webhook_id", _id(40), nullable=False),
        sa.Column("account_id", _id(40), nullable=False),
        sa.Column("type", _id(40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("status", _id(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", _id(200), nullable=True),
        sa.Column("next_attempt_at", _moment(), nullable=True),
        sa.Column("lease_token", _id(40), nullable=True),
        sa.Column("lease_until", _moment(), nullable=True),
        sa.Column("created_at", _moment(), nullable=False),
        sa.Column("delivered_at", _moment(), nullable=True),
        sa.Column("attempt_log", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("webhook_id", "seq", name="uq_webhook_delivery_event"),
        schema=schema,
    )
    op.create_index(
        "ix_webhook_delivery_due",
        "webhook_delivery",
        ["status", "next_attempt_at"],
        unique=False,
        schema=schema,
        sqlite_where=DUE,
        postgresql_where=DUE,
    )
    op.create_index(
        "ix_webhook_delivery_status_created",
        "webhook_delivery",
        ["status", "created_at"],
        unique=False,
        schema=schema,
    )
    op.create_index(
        "ix_webhook_delivery_webhook",
        "webhook_delivery",
        ["webhook_id", "id"],
        unique=False,
        schema=schema,
    )
    op.create_table(
        "webhook_flight",
        sa.Column("token", _id(40), nullable=False),
        sa.Column("started_at", _moment(), nullable=False),
        sa.Column("lease_until", _moment(), nullable=False),
        sa.Column("deliveries", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("token"),
        schema=schema,
    )


def _drop_delivery_tables(schema: str | None) -> None:
    for index in (
        "ix_webhook_delivery_webhook",
        "ix_webhook_delivery_status_created",
        "ix_webhook_delivery_due",
    ):
        op.drop_index(index, table_name="webhook_delivery", schema=schema)
    op.drop_table("webhook_delivery", schema=schema)
    op.drop_table("webhook_flight", schema=schema)


def _copy_delivery_tables(source: str, target: str) -> None:
    op.execute(
        f"INSERT INTO {target}webhook_delivery ({DELIVERY_COLUMNS})"
        f" SELECT {DELIVERY_COLUMNS} FROM {source}webhook_delivery"
    )
    op.execute(
        f"INSERT INTO {target}webhook_flight (token, started_at, lease_until, deliveries)"
        f" SELECT token, started_at, lease_until, deliveries FROM {source}webhook_flight"
    )


def upgrade() -> None:
    schema = _queue_schema()
    queue = f"{schema}." if schema else ""
    op.create_table(
        "webhook_cursor",
        sa.Column("webhook_id", _id(40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("failing_since", _moment(), nullable=True),
        sa.PrimaryKeyConstraint("webhook_id"),
        schema=schema,
    )
    op.execute(
        f"INSERT INTO {queue}webhook_cursor (webhook_id, seq, failing_since)"
        " SELECT id, cursor_seq, failing_since FROM webhook_endpoint"
    )
    if schema:
        _create_delivery_tables(schema)
        _copy_delivery_tables("main.", queue)
        _drop_delivery_tables(None)
    elif op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("webhook_delivery_webhook_id_fkey", "webhook_delivery", "foreignkey")
    with op.batch_alter_table("webhook_endpoint") as batch_op:
        batch_op.alter_column("cursor_seq", new_column_name="start_seq")
        batch_op.drop_column("failing_since")
        batch_op.add_column(sa.Column("enabled_at", _moment(), nullable=True))
    # A failing clock already running started after the endpoint was created.
    op.execute("UPDATE webhook_endpoint SET enabled_at = created_at")
    with op.batch_alter_table("webhook_endpoint") as batch_op:
        batch_op.alter_column("enabled_at", existing_type=_moment(), nullable=False)


def downgrade() -> None:
    schema = _queue_schema()
    queue = f"{schema}." if schema else ""
    with op.batch_alter_table("webhook_endpoint") as batch_op:
        batch_op.alter_column("start_seq", new_column_name="cursor_seq")
        batch_op.add_column(sa.Column("failing_since", _moment(), nullable=True))
        batch_op.drop_column("enabled_at")
    op.execute(
        "UPDATE webhook_endpoint SET"
        f" cursor_seq = MAX(cursor_seq, COALESCE((SELECT c.seq FROM {queue}webhook_cursor c"
        " WHERE c.webhook_id = webhook_endpoint.id), 0)),"
        f" failing_since = (SELECT c.failing_since FROM {queue}webhook_cursor c"
        " WHERE c.webhook_id = webhook_endpoint.id)"
        if op.get_bind().dialect.name == "sqlite"
        else "UPDATE webhook_endpoint SET"
        " cursor_seq = GREATEST(cursor_seq, COALESCE(c.seq, 0)), failing_since = c.failing_since"
        " FROM webhook_cursor c WHERE c.webhook_id = webhook_endpoint.id"
    )
    if schema:
        _create_delivery_tables(None)
        _copy_delivery_tables(queue, "main.")
        _drop_delivery_tables(schema)
        with op.batch_alter_table("webhook_delivery") as batch_op:
            batch_op.create_foreign_key(
                "webhook_delivery_webhook_id_fkey", "webhook_endpoint", ["webhook_id"], ["id"]
            )
    elif op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DELETE FROM webhook_delivery d WHERE NOT EXISTS"
            " (SELECT 1 FROM webhook_endpoint w WHERE w.id = d.webhook_id)"
        )
        op.create_foreign_key(
            "webhook_delivery_webhook_id_fkey",
            "webhook_delivery",
            "webhook_endpoint",
            ["webhook_id"],
            ["id"],
        )
    op.drop_table("webhook_cursor", schema=schema)
