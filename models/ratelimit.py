"""Failed code lookups, counted per account and per client address, so that guessing a live
short code by trying many is infeasible (docs/SECURITY.md has the figures).

Only failures are counted: a payer who types a real code is never slowed down. The window is a
sliding one read from the table, so every process behind one database shares it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Index, delete
from sqlmodel import Field, Session, SQLModel, select

from models.clock import utcnow
from models.errors import RateLimited
from models.ids import new_id

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


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written as UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def check(session: Session, account_id: str, client: str, limits: Limits = DEFAULT) -> None:
    """RateLimited while either the account or the address has too many recent failures."""
    now = utcnow()
    since = now - limits.window
    for column, value, limit in (
        (LookupFailure.account_id, account_id, limits.per_account),
        (LookupFailure.client, client[:100], limits.per_client),
    ):
        recent = session.exec(
            select(LookupFailure.created_at)
            .where(column == value, LookupFailure.created_at > since)
            .order_by(LookupFailure.created_at.desc())  # type: ignore[attr-defined]
            .limit(limit)
        ).all()
        if len(recent) >= limit:
            # Free again when the limit-th most recent failure leaves the window.
            unlock_at = _aware(recent[limit - 1]) + limits.window
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
