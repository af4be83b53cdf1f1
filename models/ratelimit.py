"""Failed code lookups, counted per account and per client address, so that guessing a live
short code by trying many is infeasible (docs/SECURITY.md has the figures).

Only failures are counted: a payer who types a real code is never slowed down. The window is a
sliding one read from the table, so every process behind one database shares it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Index, delete
from sqlmodel import Field, Session, SQLModel

from models import sql
from models.clock import utcnow
from models.errors import RateLimited
from models.ids import new_id
from models.sql import Tx

WINDOW = timedelta(minutes=15)
# A person mistypes a code a few times; twenty misses in a quarter hour is a script.
MAX_FAILURES_PER_ACCOUNT = 20
# Several people may share one address (a shop's Wi-Fi, a carrier's NAT).
MAX_FAILURES_PER_CLIENT = 60


class LookupFailure(SQLModel, table=True):
    __tablename__ = "lookup_failure"
    __table_args__ = (
        Index("ix_lookup_failure_account_at", "account_id", "created_at"),
        Index("ix_lookup_failure_client_at", "client", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    account_id: str = Field(max_length=40)
    client: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=utcnow)


@dataclass(frozen=True)
class Limits:
    window: timedelta = WINDOW
    per_account: int = MAX_FAILURES_PER_ACCOUNT
    per_client: int = MAX_FAILURES_PER_CLIENT


DEFAULT = Limits()


# The limit-th most recent failure in the window, of the account and of the address, in one
# read: either one existing means that side is over its limit (NULL when it is not).
_LIMITING = (
    "SELECT"
    " (SELECT created_at FROM lookup_failure WHERE account_id = ? AND created_at > ?"
    "  ORDER BY created_at DESC LIMIT 1 OFFSET ?),"
    " (SELECT created_at FROM lookup_failure WHERE client = ? AND created_at > ?"
    "  ORDER BY created_at DESC LIMIT 1 OFFSET ?)"
)


def check(work: Session | Tx, account_id: str, client: str, limits: Limits = DEFAULT) -> None:
    """RateLimited while either the account or the address has too many recent failures."""
    tx = sql.tx(work)
    now = utcnow()
    since = tx.moment(now - limits.window)
    row = tx.one(
        _LIMITING,
        (account_id, since, limits.per_account - 1, client[:100], since, limits.per_client - 1),
    )
    assert row is not None
    limiting = [moment for moment in map(tx.read_moment, row) if moment is not None]
    if limiting:
        # Free again when the limit-th most recent failure leaves the window.
        unlock_at = max(limiting) + limits.window
        raise RateLimited(
            "too many unknown codes; try again later",
            retry_after=int((unlock_at - now).total_seconds()) + 1,
        )


def record(session: Session, account_id: str, client: str, limits: Limits = DEFAULT) -> None:
    """Count one failed lookup, and drop this account's failures that left the window."""
    session.exec(  # type: ignore[call-overload]
        delete(LookupFailure).where(
            LookupFailure.account_id == account_id,  # type: ignore[arg-type]
            LookupFailure.created_at < utcnow() - limits.window,  # type: ignore[arg-type]
        )
    )
    session.add(LookupFailure(id=new_id("lkf"), account_id=account_id, client=client[:100]))
