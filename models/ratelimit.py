"""Failed code lookups, counted per account and per client address, so that guessing a live
short code by trying many is infeasible (docs/SECURITY.md has the figures).

Only failures are counted: a payer who types a real code is never slowed down. The window is a
sliding one read from the table, so every process behind one database shares it.
"""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass(frozen=True)
class Guard:
    """The limiter's verdict on one caller and address, as a read and its judgment, so a
    lookup can carry the read in its own statement (one round trip for both) and judge it
    before it looks at what it found."""

    account_id: str
    client: str
    limits: Limits = DEFAULT

    def read(self, tx: Tx, now: datetime) -> tuple[str, tuple[object, ...]]:
        """The statement and parameters: one row of two moments (NULL: not over the limit)."""
        since = tx.moment(now - self.limits.window)
        return _LIMITING, (
            self.account_id,
            since,
            self.limits.per_account - 1,
            self.client[:100],
            since,
            self.limits.per_client - 1,
        )

    def judge(self, tx: Tx, moments: Sequence[object], now: datetime) -> None:
        """RateLimited while either side has too many recent failures."""
        limiting = [moment for moment in map(tx.read_moment, moments) if moment is not None]
        if limiting:
            # Free again when the limit-th most recent failure leaves the window.
            unlock_at = max(limiting) + self.limits.window
            raise RateLimited(
                "too many unknown codes; try again later",
                retry_after=int((unlock_at - now).total_seconds()) + 1,
            )

    def __call__(self, tx: Tx) -> None:
        """The check on its own: a read of the limiter's table, then the judgment."""
        now = utcnow()
        row = tx.one(*self.read(tx, now))
        assert row is not None
        self.judge(tx, row, now)


def check(work: Session | Tx, account_id: str, client: str, limits: Limits = DEFAULT) -> None:
    """RateLimited while either the account or the address has too many recent failures."""
    Guard(account_id, client, limits)(sql.tx(work))


def record(session: Session, account_id: str, client: str, limits: Limits = DEFAULT) -> None:
    """Count one failed lookup, and drop this account's failures that left the window."""
    session.exec(  # type: ignore[call-overload]
        delete(LookupFailure).where(
            LookupFailure.account_id == account_id,  # type: ignore[arg-type]
            LookupFailure.created_at < utcnow() - limits.window,  # type: ignore[arg-type]
        )
    )
    session.add(LookupFailure(id=new_id("lkf"), account_id=account_id, client=client[:100]))
