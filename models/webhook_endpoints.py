"""Webhook endpoints of an account (spec §11): validation, create, change, rotate, delete.

The URL's address check needs DNS and runs before these functions (app/webhooks/addresses);
they take the URL as already checked. Only the owning account sees an endpoint: any other id
is 404, never told apart from an unknown one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import Session, select

from models.accounts import lock_accounts
from models.clock import utcnow
from models.errors import Conflict, Invalid, NotFound
from models.events import Event
from models.ids import new_id
from models.webhooks import (
    EVENT_TYPES,
    MAX_DESCRIPTION,
    MAX_ENDPOINTS,
    PENDING,
    WEBHOOK_TEST,
    WebhookCursor,
    WebhookDelivery,
    WebhookEndpoint,
    aware,
    endpoint_view,
    new_secret,
)

ROTATION_OVERLAP = timedelta(hours=24)


def parse_events(value: Any) -> list[str]:
    if value is None:
        return list(EVENT_TYPES)
    if not isinstance(value, list) or not value:
        raise Invalid("events must be a non-empty list of event types", field="events")
    chosen: list[str] = []
    for item in value:
        if not isinstance(item, str) or item not in EVENT_TYPES:
            raise Invalid(f"events may contain only: {', '.join(EVENT_TYPES)}", field="events")
        if item not in chosen:
            chosen.append(item)
    return chosen


def parse_description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise Invalid(
            f"description must be a string of at most {MAX_DESCRIPTION} characters",
            field="description",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Invalid("description must be valid Unicode text", field="description") from exc
    if "\x00" in value:
        raise Invalid("description must not contain NUL", field="description")
    return value.strip() or None


def _outbox_head(session: Session, account_id: str) -> int:
    """The account's last outbox seq: deliveries are owed for events after it."""
    head = session.exec(select(func.max(Event.seq)).where(Event.account_id == account_id)).one()
    return int(head or 0)


def owned(
    session: Session, account_id: str, webhook_id: str, *, lock: bool = False
) -> WebhookEndpoint:
    query = select(WebhookEndpoint).where(
        WebhookEndpoint.id == webhook_id, WebhookEndpoint.account_id == account_id
    )
    if lock and session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update()
    row = session.exec(query).first()
    if row is None:
        raise NotFound("no such webhook endpoint")
    return row


def create(session: Session, account_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    events = parse_events(body.get("events"))
    description = parse_description(body.get("description"))
    # The account's row lock makes the limit hold against concurrent creations.
    lock_accounts(session, {account_id})
    count = session.exec(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.account_id == account_id)
    ).one()
    if count >= MAX_ENDPOINTS:
        raise Conflict(
            f"an account may have at most {MAX_ENDPOINTS} webhook endpoints", code="webhook_limit"
        )
    now = utcnow()
    row = WebhookEndpoint(
        id=new_id("whk"),
        account_id=account_id,
        url=url,
        events=events,
        description=description,
        enabled=True,
        secret=new_secret(),
        start_seq=_outbox_head(session, account_id),
        enabled_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return endpoint_view(row, secret=True)


def list_for(
    session: Session, account_id: str, limit: int, cursor: str | None
) -> list[dict[str, Any]]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.account_id == account_id)
    if cursor is not None:
        query = query.where(WebhookEndpoint.id < cursor)
    rows = session.exec(query.order_by(WebhookEndpoint.id.desc()).limit(limit + 1)).all()  # type: ignore[attr-defined]
    return [endpoint_view(row) for row in rows]


def get(session: Session, account_id: str, webhook_id: str) -> dict[str, Any]:
    return endpoint_view(owned(session, account_id, webhook_id))


def update(
    session: Session, account_id: str, webhook_id: str, url: str | None, body: dict[str, Any]
) -> dict[str, Any]:
    row = owned(session, account_id, webhook_id, lock=True)
    if "events" in body:
        row.events = parse_events(body["events"])
    if "description" in body:
        row.description = parse_description(body["description"])
    if "enabled" in body:
        enabled = body["enabled"]
        if not isinstance(enabled, bool):
            raise Invalid("enabled must be true or false", field="enabled")
        if enabled and not row.enabled:
            # Events of the time it was off are not owed to it, nor do its failures before
            # count: it starts again from now.
            row.start_seq = _outbox_head(session, account_id)
            row.enabled_at = utcnow()
        row.enabled = enabled
    if url is not None:
        row.url = url
    row.updated_at = utcnow()
    session.add(row)
    session.flush()
    return endpoint_view(row)


def remove(session: Session, account_id: str, webhook_id: str) -> str:
    """Delete the endpoint; its queue rows go next, with ``forget``. In that order: once the
    endpoint is gone no delivery worker adds a row for it (each checks, in its write, that
    the endpoints it writes for are still there)."""
    row = owned(session, account_id, webhook_id)
    session.delete(row)
    session.flush()
    return row.id


def forget(queue_session: Session, webhook_id: str) -> None:
    """The queue rows of a deleted endpoint: its deliveries and its cursor."""
    for table in (WebhookDelivery, WebhookCursor):
        queue_session.exec(delete(table).where(table.webhook_id == webhook_id))  # type: ignore[call-overload, attr-defined]


def rotate(
    session: Session, account_id: str, webhook_id: str, overlap: timedelta = ROTATION_OVERLAP
) -> dict[str, Any]:
    row = owned(session, account_id, webhook_id, lock=True)
    now = utcnow()
    row.previous_secret = row.secret
    row.previous_secret_until = now + overlap
    row.secret = new_secret()
    row.updated_at = now
    session.add(row)
    session.flush()
    return endpoint_view(row, secret=True)


def testable(session: Session, account_id: str, webhook_id: str) -> WebhookEndpoint:
    """The endpoint a test event is for: the account's own, and enabled."""
    row = owned(session, account_id, webhook_id)
    if not row.enabled:
        raise Conflict("the webhook endpoint is disabled", code="webhook_disabled")
    return row


def send_test(queue_session: Session, row: WebhookEndpoint) -> WebhookDelivery:
    """A ``webhook.test`` delivery to the endpoint, due now (checked by ``testable``)."""
    now = utcnow()
    delivery = WebhookDelivery(
        id=new_id("msg"),
        webhook_id=row.id,
        account_id=row.account_id,
        type=WEBHOOK_TEST,
        seq=None,
        status=PENDING,
        next_attempt_at=now,
        created_at=now,
    )
    queue_session.add(delivery)
    queue_session.flush()
    return delivery


def deliveries(
    session: Session, account_id: str, webhook_id: str, limit: int, cursor: str | None
) -> list[WebhookDelivery]:
    row = owned(session, account_id, webhook_id)
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == row.id)
    if cursor is not None:
        query = query.where(WebhookDelivery.id < cursor)
    return list(
        session.exec(query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)).all()  # type: ignore[attr-defined]
    )


def retry(queue_session: Session, webhook_id: str, delivery_id: str) -> WebhookDelivery:
    """A new attempt now of a delivery of the endpoint (the caller's own, checked by
    ``owned``); an attempt in flight finishes first (one at a time, always)."""
    session = queue_session
    query = select(WebhookDelivery).where(
        WebhookDelivery.id == delivery_id, WebhookDelivery.webhook_id == webhook_id
    )
    if session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update()
    delivery = session.exec(query).first()
    if delivery is None:
        raise NotFound("no such delivery")
    now = utcnow()
    delivery.status = PENDING
    delivery.next_attempt_at = _later_of(now, delivery.lease_until)
    session.add(delivery)
    session.flush()
    return delivery


def _later_of(now: datetime, lease_until: datetime | None) -> datetime:
    if lease_until is None:
        return now
    return max(now, aware(lease_until))
