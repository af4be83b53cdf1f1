"""Accounts (C1, C9) and the devices logged into them, with login throttling."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import BigInteger, CheckConstraint, Column, Index, String
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Field, Session, SQLModel, select

from models.clock import rfc3339, utcnow
from models.errors import Conflict, Invalid, NotFound, RateLimited, Unauthorized
from models.ids import new_id
from models.sql import Tx

HANDLE_RE = re.compile(r"^[a-z0-9_.-]{3,32}$")
USER = "user"
FUNDING = "funding"
FUNDING_HANDLE = "$funding"

LOGIN_WINDOW = timedelta(minutes=15)
# A device's last_seen_at is written at most this often, so a busy page costs no write per call.
SEEN_EVERY = timedelta(minutes=1)
MAX_FAILURES_PER_HANDLE = 10
MAX_FAILURES_PER_CLIENT = 30

# OWASP's minimum Argon2id profile: memory-hard, yet cheap enough for a busy login endpoint.
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
# Verified against when the handle is unknown, so both paths cost one Argon2 verification.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class Account(SQLModel, table=True):
    __tablename__ = "account"
    __table_args__ = (
        CheckConstraint("balance >= 0 OR kind = 'funding'", name="ck_account_balance_nonnegative"),
        CheckConstraint("last_seq >= 0", name="ck_account_last_seq"),
    )

    id: str = Field(primary_key=True, max_length=40)
    handle: str = Field(sa_column=Column(String(40), unique=True, nullable=False))
    display_name: str = Field(max_length=100)
    password_hash: str | None = Field(default=None, max_length=200)
    kind: str = Field(default=USER, max_length=16)
    balance: int = Field(default=0, sa_type=BigInteger)
    last_seq: int = Field(default=0)
    created_at: datetime = Field(default_factory=utcnow)


class Device(SQLModel, table=True):
    __tablename__ = "device"

    id: str = Field(primary_key=True, max_length=40)
    account_id: str = Field(foreign_key="account.id", index=True, max_length=40)
    name: str = Field(max_length=100)
    token_hash: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = Field(default=None)
    # When a page on the device last asked who it is (GET /me), to within SEEN_EVERY.
    last_seen_at: datetime | None = Field(default=None)


class LoginFailure(SQLModel, table=True):
    __tablename__ = "login_failure"
    __table_args__ = (
        Index("ix_login_failure_handle_at", "handle", "created_at"),
        Index("ix_login_failure_client_at", "client", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    handle: str = Field(max_length=100)
    client: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=utcnow)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalize_handle(value: Any, *, field: str = "handle") -> str:
    if not isinstance(value, str):
        raise Invalid("handle must be a string", field=field)
    handle = value.strip().lower()
    if not HANDLE_RE.fullmatch(handle):
        raise Invalid("handle must be 3-32 characters of a-z, 0-9, _ . -", field=field)
    return handle


@dataclass(slots=True)
class Party:
    """The name of an account as a view shows it, read without the ORM."""

    id: str
    handle: str
    display_name: str


@dataclass(slots=True)
class LockedAccount:
    """An account row read under its lock for one money movement, as plain data: the hot path
    changes balance and last_seq with relative UPDATEs, so nothing here is flushed."""

    id: str
    handle: str
    display_name: str
    kind: str
    balance: int
    last_seq: int


def party(account: Account | Party | LockedAccount) -> dict[str, str]:
    return {"handle": account.handle, "display_name": account.display_name}


def account_view(account: Account, currency: str) -> dict[str, Any]:
    return {
        "id": account.id,
        "handle": account.handle,
        "display_name": account.display_name,
        "balance": account.balance,
        "currency": currency,
        "created_at": rfc3339(account.created_at),
    }


def public_view(account: Account) -> dict[str, Any]:
    return {"id": account.id, "handle": account.handle, "display_name": account.display_name}


def device_view(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "name": device.name,
        "created_at": rfc3339(device.created_at),
        "last_seen_at": rfc3339(device.last_seen_at or device.created_at),
        "revoked_at": rfc3339(device.revoked_at),
    }


def find_by_handle(session: Session, handle: str) -> Account | None:
    return session.exec(
        select(Account).where(Account.handle == handle, Account.kind == USER)  # type: ignore[arg-type]
    ).one_or_none()


def get_by_handle(session: Session, value: Any, *, field: str) -> Account:
    """The user account a request body names; 404 with the field when there is none."""
    handle = value.strip().lower() if isinstance(value, str) else value
    account = find_by_handle(session, handle) if isinstance(handle, str) else None
    if account is None:
        if not isinstance(value, str):
            raise Invalid(f"{field} must be a handle", field=field)
        raise NotFound(f"no account with that {field}", field=field)
    return account


def lock_accounts(session: Session, account_ids: set[str]) -> dict[str, Account]:
    """Lock the rows in ascending id order (deadlock-free) and return them fresh."""
    ordered = sorted(account_ids)
    query = select(Account).where(Account.id.in_(ordered)).order_by(Account.id)  # type: ignore[union-attr]
    if session.get_bind().dialect.name != "sqlite":
        # NO KEY UPDATE: writers still exclude each other, but the foreign-key checks of other
        # inserts (a new code of this payee, an event row) do not wait for this transaction.
        query = query.with_for_update(key_share=True)
    rows = session.exec(query.execution_options(populate_existing=True)).all()
    return {row.id: row for row in rows}


_LOCK_ROWS = (
    "SELECT id, handle, display_name, kind, balance, last_seq FROM account"
    " WHERE id IN ({marks}) ORDER BY id"
)


def lock_rows_query(tx: Tx, account_ids: set[str]) -> tuple[str, list[str]]:
    """The statement of ``lock_rows``, for a caller that runs it together with another."""
    ordered = sorted(account_ids)
    statement = _LOCK_ROWS.format(marks=", ".join("?" for _ in ordered))
    return (statement if tx.is_sqlite else statement + " FOR NO KEY UPDATE"), ordered


def locked_rows(rows: list[tuple[Any, ...]]) -> dict[str, LockedAccount]:
    return {row[0]: LockedAccount(*row) for row in rows}


def lock_rows(tx: Tx, account_ids: set[str]) -> dict[str, LockedAccount]:
    """``lock_accounts`` for the hot path: the same ascending-id locks in one hand-written
    query, rows as plain data instead of ORM objects (building those cost more than the query).
    SQLite needs no row lock: the write transaction began IMMEDIATE."""
    return locked_rows(tx.all(*lock_rows_query(tx, account_ids)))


def sign_up(session: Session, handle: Any, display_name: Any, password: Any) -> Account:
    handle = normalize_handle(handle)
    if not isinstance(display_name, str) or not 1 <= len(display_name.strip()) <= 100:
        raise Invalid("display_name must be 1-100 characters", field="display_name")
    if not isinstance(password, str) or len(password) < 8 or len(password) > 1024:
        raise Invalid("password must be 8-1024 characters", field="password")
    if session.exec(select(Account.id).where(Account.handle == handle)).first() is not None:
        raise Conflict("that handle is taken", code="handle_taken", field="handle")
    account = Account(
        id=new_id("acc"),
        handle=handle,
        display_name=display_name.strip(),
        password_hash=_hasher.hash(password),
    )
    session.add(account)
    session.flush()
    return account


def funding_account(session: Session) -> Account:
    """The platform's funding account: the other side of every deposit. Made on first use;
    concurrent first deposits both insert-or-ignore it, so neither fails on the unique handle."""
    query = select(Account).where(Account.handle == FUNDING_HANDLE)
    account = session.exec(query).one_or_none()
    if account is None:
        dialect = session.get_bind().dialect.name
        insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
        session.execute(
            insert(Account)
            .values(
                id=new_id("acc"),
                handle=FUNDING_HANDLE,
                display_name="Platform funding",
                kind=FUNDING,
                balance=0,
                last_seq=0,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["handle"])
        )
        account = session.exec(query).one()
    return account


def _recent_failures(session: Session, column: Any, value: str, since: datetime) -> list[datetime]:
    return list(
        session.exec(
            select(LoginFailure.created_at)
            .where(column == value, LoginFailure.created_at > since)
            .order_by(LoginFailure.created_at.desc())  # type: ignore[attr-defined]
            .limit(MAX_FAILURES_PER_CLIENT)
        ).all()
    )


def check_login_allowed(session: Session, handle: str, client: str) -> None:
    now = utcnow()
    since = now - LOGIN_WINDOW
    for column, value, limit in (
        (LoginFailure.handle, handle, MAX_FAILURES_PER_HANDLE),
        (LoginFailure.client, client, MAX_FAILURES_PER_CLIENT),
    ):
        failures = _recent_failures(session, column, value, since)
        if len(failures) >= limit:
            # The lock lifts when the limit-th most recent failure leaves the window.
            unlock_at = failures[limit - 1] + LOGIN_WINDOW
            raise RateLimited(
                "too many failed logins; try again later",
                retry_after=int((unlock_at - now).total_seconds()) + 1,
            )


def record_login_failure(session: Session, handle: str, client: str) -> None:
    session.add(LoginFailure(id=new_id("lf"), handle=handle[:100], client=client[:100]))


def verify_password(account: Account | None, password: str) -> bool:
    try:
        return _hasher.verify(
            account.password_hash if account and account.password_hash else _DUMMY_HASH, password
        ) and bool(account and account.password_hash)
    except (VerificationError, InvalidHashError):
        return False


def create_device(session: Session, account: Account, name: Any) -> tuple[Device, str]:
    if name is None:
        name = "device"
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
        raise Invalid("device_name must be 1-100 characters", field="device_name")
    token = "pc_" + secrets.token_urlsafe(32)
    device = Device(
        id=new_id("dev"), account_id=account.id, name=name.strip(), token_hash=hash_token(token)
    )
    session.add(device)
    session.flush()
    return device, token


def authenticate(session: Session, token: str) -> tuple[Account, Device]:
    """The account and device of a bearer token; Unauthorized if unknown or revoked."""
    if not token or len(token) > 200:
        raise Unauthorized("missing or invalid token")
    row = session.exec(
        select(Device, Account)
        .join(Account, Account.id == Device.account_id)  # type: ignore[arg-type]
        .where(Device.token_hash == hash_token(token), Device.revoked_at.is_(None))  # type: ignore[union-attr]
    ).first()
    if row is None:
        raise Unauthorized("missing or invalid token")
    device, account = row
    return account, device


def list_devices(session: Session, account_id: str) -> list[Device]:
    return list(
        session.exec(
            select(Device)
            .where(Device.account_id == account_id, Device.revoked_at.is_(None))  # type: ignore[union-attr]
            .order_by(Device.id.desc())  # type: ignore[attr-defined]
        ).all()
    )


def seen_is_stale(device: Device | None, now: datetime) -> bool:
    if device is None or device.revoked_at is not None:
        return False
    return device.last_seen_at is None or now - device.last_seen_at >= SEEN_EVERY


def mark_seen(session: Session, device_id: str, now: datetime) -> None:
    """Records that the device was just seen, unless it was within SEEN_EVERY already."""
    device = session.get(Device, device_id)
    if device is not None and seen_is_stale(device, now):
        device.last_seen_at = now
        session.add(device)


def revoke_device(session: Session, account_id: str, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None or device.account_id != account_id or device.revoked_at is not None:
        raise NotFound("no such device")
    device.revoked_at = utcnow()
    session.add(device)
    return device
