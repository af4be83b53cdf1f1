"""Stored responses for ``Idempotency-Key`` (spec §2), shared by every money-moving POST.

A key is scoped to the account and the route. The record is looked up at the start of the
request's own transaction and inserted, with its response, at the end of that same transaction.
The key is the table's primary key, so of two concurrent requests with the same key only one can
commit: on SQLite the write lock orders them and the second sees the first's record; on
PostgreSQL the second's insert waits on the first's uncommitted key and then fails, its whole
transaction (the effect included) rolls back, and its retry reads the stored response. One
effect, one write per request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, Session, SQLModel

from models import sql
from models.clock import utcnow
from models.errors import Invalid
from models.sql import Tx

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
    # Printable ASCII is exactly U+0020-U+007E, checked in C rather than per character here.
    if not (1 <= len(raw) <= 255 and raw.isascii() and raw.isprintable()):
        raise Invalid(
            "Idempotency-Key must be 1-255 printable ASCII characters", field="Idempotency-Key"
        )
    return raw


def request_fingerprint(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


FIND = (
    "SELECT request_hash, status_code, response, created_at FROM idempotency_record"
    ' WHERE account_id = ? AND scope = ? AND "key" = ?'
)
# Only the expired record: a fresh one another request wrote meanwhile stays.
_DROP_EXPIRED = (
    'DELETE FROM idempotency_record WHERE account_id = ? AND scope = ? AND "key" = ?'
    " AND created_at < ?"
)
_INSERT = (
    "INSERT INTO idempotency_record"
    ' (account_id, scope, "key", request_hash, status_code, response, created_at)'
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# A record written by the statement of its effect, a row for each row of the effect's CTE
# named after it (``... FROM effect``): the two commit together or not at all.
RECORD_SELECTED = (
    "INSERT INTO idempotency_record"
    ' (account_id, scope, "key", request_hash, status_code, response, created_at)'
    " SELECT ?::text, ?::text, ?::text, ?::text, ?::integer, ?::json, ?::timestamptz"
)


def begin(
    work: Session | Tx, account_id: str, scope: str, key: str, fingerprint: str
) -> StoredResponse | None:
    """The response stored under the key, or None when the request is to run (and
    ``finish`` must then record it in this same transaction).

    Raises ``Invalid(idempotency_key_reused)`` when the key was used with another body.
    """
    tx = sql.tx(work)
    where = (account_id, scope, key)
    found = tx.one(FIND, where)
    return None if found is None else _unexpired(tx, where, fingerprint, found)


def stored(tx: Tx, claim: Claim, found: Sequence[Any]) -> StoredResponse | None:
    """``begin``'s answer for a record that a statement read with ``FIND``'s columns."""
    return _unexpired(tx, claim.where(), claim.fingerprint, found)


def _unexpired(
    tx: Tx, where: tuple[str, str, str], fingerprint: str, found: Sequence[Any]
) -> StoredResponse | None:
    """The response of a found record; None when it has expired, and it is dropped: the key
    may be used afresh."""
    request_hash, status_code, response, created_at = found
    created = tx.read_moment(created_at)
    assert created is not None
    stale_before = utcnow() - TTL
    if created < stale_before:
        tx.run(_DROP_EXPIRED, (*where, tx.moment(stale_before)))
        return None
    return replay(request_hash, status_code, tx.read_json(response), fingerprint)


def replay(
    request_hash: str, status_code: int | None, body: Any, fingerprint: str
) -> StoredResponse:
    """The stored response of a key, for a request with this fingerprint."""
    if request_hash != fingerprint:
        raise Invalid(
            "this Idempotency-Key was used with a different request",
            code="idempotency_key_reused",
            field="Idempotency-Key",
        )
    if status_code is None:
        # Only reachable from a record written by an older release, which claimed keys first.
        raise RuntimeError("idempotency record without a response")
    return StoredResponse(status_code, body)


@dataclass(frozen=True, slots=True)
class Claim:
    """A key a request will record its response under, in the transaction of its effect."""

    account_id: str
    scope: str
    key: str
    fingerprint: str

    def where(self) -> tuple[str, str, str]:
        return (self.account_id, self.scope, self.key)

    def recorded(self, tx: Tx, status_code: int, body: Any, now: datetime) -> tuple[Any, ...]:
        """``RECORD_SELECTED``'s parameters: the response recorded under this key."""
        return (*self.where(), self.fingerprint, status_code, tx.json(body), tx.moment(now))

    @property
    def stale_before(self) -> datetime:
        """Records older than this are expired: the key may be used afresh."""
        return utcnow() - TTL


def finish(
    work: Session | Tx,
    account_id: str,
    scope: str,
    key: str,
    fingerprint: str,
    status_code: int,
    body: Any,
) -> None:
    """Record the response under the key; a concurrent request that recorded it first makes
    this raise ``IntegrityError``, which rolls the whole transaction back."""
    tx = sql.tx(work)
    tx.run(
        _INSERT,
        (account_id, scope, key, fingerprint, status_code, tx.json(body), tx.moment(utcnow())),
    )
