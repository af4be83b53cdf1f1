"""The outbox: every change that concerns an account writes an event for it in the same
transaction, numbered by the account's own gapless ``seq`` (C6's durable truth)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Column
from sqlmodel import Field, Session, SQLModel, select

from models.accounts import Account, LockedAccount
from models.clock import rfc3339, utcnow
from models.sql import Tx

PAYMENT_SUCCEEDED = "payment.succeeded"
PAYMENT_REFUNDED = "payment.refunded"
CODE_PAID = "code.paid"
AGENCY_REQUESTED = "agency.requested"
AGENCY_ACTIVATED = "agency.activated"
AGENCY_REVOKED = "agency.revoked"
DEPOSIT_SUCCEEDED = "deposit.succeeded"


class Event(SQLModel, table=True):
    __tablename__ = "event"
    __table_args__ = (CheckConstraint("seq >= 1", name="ck_event_seq_positive"),)

    account_id: str = Field(foreign_key="account.id", primary_key=True, max_length=40)
    seq: int = Field(primary_key=True)
    type: str = Field(max_length=40)
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, index=True)


@dataclass(frozen=True, slots=True)
class Published:
    """An event as it leaves the database: what the realtime hub carries."""

    account_id: str
    seq: int
    event: dict[str, Any]


def event_body(row: Event) -> dict[str, Any]:
    return {"type": row.type, "created_at": rfc3339(row.created_at), "data": row.data}


def event_view(row: Event) -> dict[str, Any]:
    return {"seq": row.seq, **event_body(row)}


def append(session: Session, account: Account, type_: str, data: dict[str, Any]) -> Published:
    """Write the account's next event. The caller holds the account row's lock."""
    account.last_seq += 1
    session.add(account)
    row = Event(account_id=account.id, seq=account.last_seq, type=type_, data=data)
    session.add(row)
    return Published(account.id, row.seq, event_body(row))


def stage(
    account: LockedAccount, type_: str, data: dict[str, Any], created_at: datetime
) -> tuple[dict[str, Any], Published]:
    """The account's next event as a row for ``insert``, without the ORM's unit of work.

    The caller holds the account row's lock and must add one to the stored ``last_seq`` for
    each staged event in the same transaction; the in-memory row already counts it."""
    seq = account.last_seq + 1
    account.last_seq = seq
    row = {"account_id": account.id, "seq": seq, "type": type_, "data": data}
    row["created_at"] = created_at
    body = {"type": type_, "created_at": rfc3339(created_at), "data": data}
    return row, Published(account.id, seq, body)


_INSERT = "INSERT INTO event (account_id, seq, type, data, created_at) VALUES (?, ?, ?, ?, ?)"


def insert(tx: Tx, rows: list[dict[str, Any]]) -> None:
    """Write staged events in one statement (executemany). Every party of a payment gets the
    same data object: it is serialized once."""
    encoded: dict[int, Any] = {}
    values = []
    for r in rows:
        data = r["data"]
        if id(data) not in encoded:
            encoded[id(data)] = tx.json(data)
        values.append(
            (r["account_id"], r["seq"], r["type"], encoded[id(data)], tx.moment(r["created_at"]))
        )
    tx.run_many(_INSERT, values)


def list_after(session: Session, account_id: str, after: int, limit: int) -> list[Event]:
    return list(
        session.exec(
            select(Event)
            .where(Event.account_id == account_id, Event.seq > after)
            .order_by(Event.seq)  # type: ignore[arg-type]
            .limit(limit)
        ).all()
    )
