"""Webhook endpoints, the deliveries owed to them and every attempt at one (spec §11).

A delivery is owed for each outbox event (§8) of the account whose type an enabled endpoint
subscribes to, from the endpoint's ``start_seq`` on (set when it is created, and when it is
enabled again). The queue's own row per endpoint, ``webhook_cursor``, keeps the outbox
``seq`` up to which deliveries were made for it, and moving it and inserting the deliveries
happen in one transaction: an event committed is a delivery owed, whatever happens to the
process afterwards.

The queue's tables (``QUEUE_TABLES``) are written by the delivery workers several times a
payment; on SQLite they live in a database file of their own, with a write lock of their own
(models/db.py), so a foreign key cannot reach the endpoint from them: an endpoint's rows go
after it when it is deleted (models/webhook_endpoints.py), and the queue's writes read the
endpoints they need through a reader of the database (models/webhook_queue.py).

Attempts are claimed with a lease (``lease_token``, ``lease_until``) so that, with any number
of processes on one database, one attempt of a delivery is in flight at a time: a process that
dies mid-attempt leaves a lease that runs out, and another process takes the delivery.

A delivery's first attempt is made before its row exists: the fan-out writes one
``webhook_flight`` per pass, which holds the ids of the deliveries it sends under one lease,
and each delivery's row is inserted once, with the first attempt's outcome. Almost every
delivery succeeds at once, so almost every delivery costs one insert, instead of an insert of a
leased row and then an update of it. A flight whose process died runs out like a lease, and
another process inserts the deliveries it held as pending, each with its interrupted attempt.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, String, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from models.clock import rfc3339
from models.events import (
    AGENCY_ACTIVATED,
    AGENCY_REQUESTED,
    AGENCY_REVOKED,
    CODE_PAID,
    DEPOSIT_SUCCEEDED,
    PAYMENT_REFUNDED,
    PAYMENT_SUCCEEDED,
)

WEBHOOK_TEST = "webhook.test"
# Written to the account's outbox when an endpoint failing for three days is switched off.
WEBHOOK_DISABLED = "webhook.disabled"

# What an endpoint may subscribe to: the §8 types and the one this feature adds to the outbox.
EVENT_TYPES = (
    PAYMENT_SUCCEEDED,
    PAYMENT_REFUNDED,
    CODE_PAID,
    AGENCY_REQUESTED,
    AGENCY_ACTIVATED,
    AGENCY_REVOKED,
    DEPOSIT_SUCCEEDED,
    WEBHOOK_DISABLED,
)

DUE_CONDITION = "status = 'pending'"

MAX_ENDPOINTS = 10
MAX_URL = 2048
MAX_DESCRIPTION = 500
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32

PENDING = "pending"
SUCCEEDED = "succeeded"
FAILED = "failed"

# Attempt outcomes, also the label values of the attempts metric.
IN_FLIGHT = "in_flight"
OK = "succeeded"
HTTP_ERROR = "http_error"
REDIRECT = "redirect"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
REFUSED_ADDRESS = "refused_address"
INTERRUPTED = "interrupted"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "webhook_endpoint"

    id: str = Field(primary_key=True, max_length=40)
    account_id: str = Field(foreign_key="account.id", index=True, max_length=40)
    url: str = Field(sa_column=Column(String(MAX_URL), nullable=False))
    events: list[str] = Field(sa_column=Column(JSON, nullable=False))
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION)
    enabled: bool = Field(default=True)
    secret: str = Field(max_length=100)
    previous_secret: str | None = Field(default=None, max_length=100)
    previous_secret_until: datetime | None = Field(default=None)
    # Deliveries are owed for the account's outbox events after this seq.
    start_seq: int = Field(default=0)
    # When it was created or last enabled again: a failing clock started before is void.
    enabled_at: datetime
    created_at: datetime
    updated_at: datetime


QUEUE_TABLES = ("webhook_cursor", "webhook_delivery", "webhook_flight")


class WebhookCursor(SQLModel, table=True):
    """The queue's own state of an endpoint: written by the delivery workers, deleted with
    its endpoint."""

    __tablename__ = "webhook_cursor"

    webhook_id: str = Field(primary_key=True, max_length=40)
    # The outbox seq up to which deliveries have been created (below ``start_seq`` it means
    # nothing: the endpoint was enabled again since).
    seq: int = Field(default=0)
    # Set by the first failed attempt after a success; cleared by a success.
    failing_since: datetime | None = Field(default=None)


class WebhookDelivery(SQLModel, table=True):
    __tablename__ = "webhook_delivery"
    __table_args__ = (
        # One delivery per outbox event and endpoint (test events have no seq).
        UniqueConstraint("webhook_id", "seq", name="uq_webhook_delivery_event"),
        # Only what may still be attempted: a delivery that ended never enters it. The status
        # leads, as in the claim's WHERE, so that SQLite's planner prefers it to the one below.
        Index(
            "ix_webhook_delivery_due",
            "status",
            "next_attempt_at",
            sqlite_where=text(DUE_CONDITION),
            postgresql_where=text(DUE_CONDITION),
        ),
        Index("ix_webhook_delivery_status_created", "status", "created_at"),
        Index("ix_webhook_delivery_webhook", "webhook_id", "id"),
    )

    # Also the webhook-id header: the same for every attempt.
    id: str = Field(primary_key=True, max_length=40)
    webhook_id: str = Field(max_length=40)
    account_id: str = Field(max_length=40)
    type: str = Field(max_length=40)
    seq: int | None = Field(default=None)
    status: str = Field(default=PENDING, max_length=16)
    attempts: int = Field(default=0)
    last_status_code: int | None = Field(default=None)
    last_error: str | None = Field(default=None, max_length=200)
    next_attempt_at: datetime | None = Field(default=None)
    lease_token: str | None = Field(default=None, max_length=40)
    lease_until: datetime | None = Field(default=None)
    created_at: datetime
    delivered_at: datetime | None = Field(default=None)
    # Every attempt's outcome, oldest first: a list of attempt_entry() objects.
    attempt_log: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )


class WebhookFlight(SQLModel, table=True):
    """First attempts of one pass in flight: the deliveries they are for, not yet rows."""

    __tablename__ = "webhook_flight"

    token: str = Field(primary_key=True, max_length=40)
    started_at: datetime
    lease_until: datetime
    # [[delivery id (the webhook-id sent), webhook id, account id, type, seq], ...]
    deliveries: list[list[Any]] = Field(sa_column=Column(JSON, nullable=False))


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def endpoint_view(row: WebhookEndpoint, *, secret: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": row.id,
        "url": row.url,
        "events": list(row.events),
        "description": row.description,
        "enabled": row.enabled,
        "created_at": rfc3339(row.created_at),
    }
    if secret:
        view["secret"] = row.secret
    return view


def attempt_entry(
    number: int,
    outcome: str,
    started_at: datetime,
    *,
    status_code: int | None = None,
    error: str | None = None,
    finished_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "number": number,
        "outcome": outcome,
        "status_code": status_code,
        "error": error,
        "started_at": rfc3339(started_at),
        "finished_at": rfc3339(finished_at),
    }


def delivery_view(row: WebhookDelivery, *, log: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": row.id,
        "webhook_id": row.webhook_id,
        "type": row.type,
        "seq": row.seq,
        "status": row.status,
        "attempts": row.attempts,
        "last_status_code": row.last_status_code,
        "last_error": row.last_error,
        "next_attempt_at": rfc3339(row.next_attempt_at) if row.status == PENDING else None,
        "created_at": rfc3339(row.created_at),
        "delivered_at": rfc3339(row.delivered_at),
    }
    if log:
        view["attempt_log"] = list(row.attempt_log)
    return view
