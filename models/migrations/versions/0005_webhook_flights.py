"""webhook_flight: first attempts in flight before their delivery rows; the due index partial

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 06:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DUE = sa.text("status = 'pending'")


def upgrade() -> None:
    op.create_table(
        "webhook_flight",
        sa.Column("token", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("started_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("lease_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("deliveries", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("token"),
    )
    op.drop_index("ix_webhook_delivery_due", table_name="webhook_delivery")
    op.create_index(
        "ix_webhook_delivery_due",
        "webhook_delivery",
        ["status", "next_attempt_at"],
        unique=False,
        sqlite_where=DUE,
        postgresql_where=DUE,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_delivery_due", table_name="webhook_delivery")
    op.create_index(
        "ix_webhook_delivery_due", "webhook_delivery", ["status", "next_attempt_at"], unique=False
    )
    op.drop_table("webhook_flight")
