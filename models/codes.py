"""Collection codes (C3, C7, C8): static and dynamic, their tokens and typed short codes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, Column, String, update
from sqlmodel import Field, Session, SQLModel, select

from models import shortcodes
from models.clock import utcnow

STATIC = "static"
DYNAMIC = "dynamic"
ACTIVE = "active"
PAID = "paid"
EXPIRED = "expired"
CANCELLED = "cancelled"
REVOKED = "revoked"


class Code(SQLModel, table=True):
    __tablename__ = "code"
    __table_args__ = (
        CheckConstraint("amount IS NULL OR amount > 0", name="ck_code_amount_positive"),
        CheckConstraint("kind IN ('static', 'dynamic')", name="ck_code_kind"),
    )

    id: str = Field(primary_key=True, max_length=40)
    agency_id: str = Field(foreign_key="agency.id", index=True, max_length=40)
    payee_id: str = Field(foreign_key="account.id", index=True, max_length=40)
    agent_id: str = Field(foreign_key="account.id", index=True, max_length=40)
    created_by_id: str = Field(foreign_key="account.id", max_length=40)
    kind: str = Field(max_length=10)
    status: str = Field(default=ACTIVE, max_length=12)
    label: str | None = Field(default=None, max_length=100)
    amount: int | None = Field(default=None, sa_type=BigInteger)
    items: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    memo: str | None = Field(default=None, max_length=500)
    token: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    short_code: str = Field(sa_column=Column(String(10), unique=True, nullable=False))
    expires_at: datetime | None = Field(default=None)
    created_at: datetime = Field(default_factory=utcnow)
    paid_payment_id: str | None = Field(default=None, max_length=40)


def revoke_unpaid_of_agency(session: Session, agency_id: str) -> None:
    """A revoked agency's unpaid codes stop accepting payments at once."""
    session.exec(
        update(Code)  # type: ignore[arg-type]
        .where(Code.agency_id == agency_id, Code.status == ACTIVE)  # type: ignore[arg-type]
        .values(status=REVOKED)
    )


def effective_status(code: Code, now: datetime | None = None) -> str:
    """Stored status, except that an active code past its expiry reads as expired."""
    if code.status == ACTIVE and code.expires_at is not None:
        expires_at = code.expires_at
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= (now or utcnow()):
            return EXPIRED
    return code.status


def resolve(session: Session, typed: str) -> Code | None:
    """The code a payer names: its URL token, or its short code as a person would type it."""
    if not isinstance(typed, str) or not typed or len(typed) > 200:
        return None
    by_token = session.exec(select(Code).where(Code.token == typed)).first()
    if by_token is not None:
        return by_token
    canonical = shortcodes.normalize(typed)
    if canonical is None:
        return None
    return session.exec(select(Code).where(Code.short_code == canonical)).first()


def lock(session: Session, code_id: str) -> Code:
    """Re-read the code under a row lock (PostgreSQL) so its status is decided once."""
    query = select(Code).where(Code.id == code_id)
    if session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update()
    return session.exec(query.execution_options(populate_existing=True)).one()


def mark_paid(session: Session, code: Code, payment_id: str) -> None:
    code.status = PAID
    code.paid_payment_id = payment_id
    session.add(code)
