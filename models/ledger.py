"""Double-entry ledger: every money movement is a transaction of legs that sum to zero, and a
balance is only ever changed together with the leg that explains it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Index, func
from sqlmodel import Field, Session, SQLModel, select

from models.accounts import (
    Account,
    LockedAccount,
    funding_account,
    get_by_handle,
    lock_accounts,
)
from models.clock import rfc3339, utcnow
from models.errors import Conflict
from models.events import DEPOSIT_SUCCEEDED, Published, append
from models.ids import new_id
from models.money import parse_amount
from models.sql import Tx


class LedgerEntry(SQLModel, table=True):
    __tablename__ = "ledger_entry"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="ck_ledger_entry_nonzero"),
        Index("ix_ledger_entry_account", "account_id", "id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    txn_id: str = Field(index=True, max_length=40)
    kind: str = Field(max_length=20)
    account_id: str = Field(foreign_key="account.id", max_length=40)
    amount: int = Field(sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow)


class Deposit(SQLModel, table=True):
    __tablename__ = "deposit"
    __table_args__ = (CheckConstraint("amount > 0", name="ck_deposit_amount_positive"),)

    id: str = Field(primary_key=True, max_length=40)
    account_id: str = Field(foreign_key="account.id", index=True, max_length=40)
    amount: int = Field(sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow)


class InsufficientFunds(Conflict):
    code = "insufficient_funds"


def _check(legs: Sequence[tuple[Account | LockedAccount, int]]) -> None:
    if sum(amount for _, amount in legs) != 0:
        raise ValueError("ledger transaction does not balance")
    for account, amount in legs:
        if account.kind != "funding" and account.balance + amount < 0:
            raise InsufficientFunds("insufficient funds")


def post(session: Session, kind: str, txn_id: str, legs: Sequence[tuple[Account, int]]) -> None:
    """Apply balanced legs to locked account rows. Refuses an unbalanced transaction outright;
    a balance that would go negative is ``insufficient_funds`` (and a CHECK besides)."""
    _check(legs)
    for account, amount in legs:
        account.balance += amount
        session.add(account)
        session.add(
            LedgerEntry(
                id=new_id("led"), txn_id=txn_id, kind=kind, account_id=account.id, amount=amount
            )
        )


def entries(
    kind: str, txn_id: str, legs: Sequence[tuple[LockedAccount, int]], created_at: datetime
) -> list[dict[str, Any]]:
    """The same checks as ``post``, but the legs come back as rows for ``insert`` and the
    balances are left to the caller, which changes them in the same transaction."""
    _check(legs)
    return [
        {
            "id": new_id("led"),
            "txn_id": txn_id,
            "kind": kind,
            "account_id": account.id,
            "amount": amount,
            "created_at": created_at,
        }
        for account, amount in legs
    ]


_INSERT = (
    "INSERT INTO ledger_entry (id, txn_id, kind, account_id, amount, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def insert(tx: Tx, rows: list[dict[str, Any]]) -> None:
    """Write ledger legs in one statement (executemany)."""
    tx.run_many(
        _INSERT,
        [
            (
                r["id"],
                r["txn_id"],
                r["kind"],
                r["account_id"],
                r["amount"],
                tx.moment(r["created_at"]),
            )
            for r in rows
        ],
    )


def deposit_view(deposit: Deposit, handle: str, currency: str) -> dict[str, Any]:
    return {
        "id": deposit.id,
        "handle": handle,
        "amount": deposit.amount,
        "currency": currency,
        "created_at": rfc3339(deposit.created_at),
    }


def deposit(
    session: Session, handle: Any, amount: Any, currency: str
) -> tuple[dict[str, Any], list[Published]]:
    """Money in through the platform's funding rail (spec §4)."""
    amount = parse_amount(amount)
    account = get_by_handle(session, handle, field="handle")
    funding = funding_account(session)
    locked = lock_accounts(session, {account.id, funding.id})
    account, funding = locked[account.id], locked[funding.id]
    record = Deposit(id=new_id("dep"), account_id=account.id, amount=amount)
    session.add(record)
    post(session, "deposit", record.id, [(funding, -amount), (account, amount)])
    view = deposit_view(record, account.handle, currency)
    return view, [append(session, account, DEPOSIT_SUCCEEDED, view)]


def ledger_sum(session: Session, account_id: str) -> int:
    total = session.exec(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.account_id == account_id
        )
    ).one()
    return int(total)
