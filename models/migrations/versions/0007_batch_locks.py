"""batch locks by key: a PostgreSQL batch's row locks through the primary keys

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 08:10:00

The group commit's batch (``models.pg_group``) first locks every account and every code of
its payments, in ascending id order. As a statement of the batch's own, its plan was made once
per connection, when the tables might hold a handful of rows (a new shop, or a database that
autovacuum has not analyzed yet, or never will where it is off): a scan of the whole table was
the cheaper plan then, and stayed the plan. Every batch then read every code ever issued, and
with each batch holding its payee's row while it read them (docs/BENCHMARKS.md). In this
function the locks are planned with sequential scans off, so they go by primary key however
small the tables were when they were planned; with a few ids against a whole table that is the
right plan at every size. NULL arrays (every statement of a batch but its first) lock nothing.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK = r"""
CREATE FUNCTION paycode_lock(p_accounts text[], p_codes text[]) RETURNS integer
LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
DECLARE
    accounts_locked integer;
    codes_locked integer;
BEGIN
    SELECT count(*) INTO accounts_locked FROM (
        SELECT 1 FROM account WHERE id = ANY(p_accounts) ORDER BY id FOR NO KEY UPDATE
    ) AS a;
    SELECT count(*) INTO codes_locked FROM (
        SELECT 1 FROM code WHERE id = ANY(p_codes) ORDER BY id FOR NO KEY UPDATE
    ) AS c;
    RETURN accounts_locked + codes_locked;
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(LOCK)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION paycode_lock(text[], text[])")
