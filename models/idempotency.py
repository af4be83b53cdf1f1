"""Stored responses for ``Idempotency-Key`` (spec §2), shared by every money-moving POST.

A key is scoped to the account and the route. The record is inserted at the start of the
request's own transaction, so a concurrent request with the same key waits on the unique key
(PostgreSQL) or the write lock (SQLite) and then sees the stored response: one effect.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, Session, SQLModel, delete, select

from models.clock import utcnow
from models.errors import Invalid

TTL = timedelta(hours=24)


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "idempotency_record"

    account_id: str = Field(foreign_key="account.id", primary_key=True, max_length=40)
    scope: str = Field(primary_key=True, max_length=60)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    status_code: int | None = Field(default=None)
    response: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, index=True)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    body: Any


def validate_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not 1 <= len(raw) <= 255 or not all(33 <= ord(c) <= 126 or c == " " for c in raw):
        raise Invalid(
            "Idempotency-Key must be 1-255 printable ASCII characters", field="Idempotency-Key"
        )
    return raw


def request_fingerprint(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def begin(
    session: Session, account_id: str, scope: str, key: str, fingerprint: str
) -> StoredResponse | None:
    """Claim the key inside the current transaction, or return the response stored under it.

    Raises ``Invalid(idempotency_key_reused)`` when the key was used with another body.
    """
    existing = session.get(IdempotencyRecord, (account_id, scope, key))
    if existing is not None and existing.created_at < utcnow() - TTL:
        session.delete(existing)
        session.flush()
        existing = None
    if existing is None:
        session.add(
            IdempotencyRecord(account_id=account_id, scope=scope, key=key, request_hash=fingerprint)
        )
        session.flush()
        return None
    if existing.request_hash != fingerprint:
        raise Invalid(
            "this Idempotency-Key was used with a different request",
            code="idempotency_key_reused",
            field="Idempotency-Key",
        )
    if existing.status_code is None:
        # Only reachable if a claim committed without a response, which finish() prevents.
        raise RuntimeError("idempotency record without a response")
    return StoredResponse(existing.status_code, existing.response)


def finish(
    session: Session, account_id: str, scope: str, key: str, status_code: int, body: Any
) -> None:
    record = session.get(IdempotencyRecord, (account_id, scope, key))
    assert record is not None, "finish() without begin()"
    record.status_code = status_code
    record.response = body
    session.add(record)


def purge_expired(session: Session) -> int:
    result = session.exec(
        delete(IdempotencyRecord).where(IdempotencyRecord.created_at < utcnow() - TTL)  # type: ignore[arg-type]
    )
    return result.rowcount or 0


def lookup(session: Session, account_id: str, scope: str, key: str) -> IdempotencyRecord | None:
    return session.exec(
        select(IdempotencyRecord).where(
            IdempotencyRecord.account_id == account_id,
            IdempotencyRecord.scope == scope,
            IdempotencyRecord.key == key,
        )
    ).first()
