"""The delivery queue of spec §11: from the outbox to deliveries, leases, outcomes, retries.

Every function is one transaction. With several processes on PostgreSQL the rows a pass works
on are taken with ``FOR UPDATE SKIP LOCKED``, so two processes never fan out one endpoint or
claim one delivery at once; on SQLite the single writer serializes the same statements. An
attempt holds its delivery by a lease: the claim writes a fresh ``lease_token`` and a
``lease_until`` past the attempt's timeout, only the holder of the token records the outcome,
and a delivery whose holder died becomes due again when the lease runs out.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, update
from sqlmodel import Session, select

from models.accounts import lock_accounts
from models.clock import rfc3339
from models.events import Event, Published, append
from models.ids import new_id
from models.webhooks import (
    FAILED,
    IN_FLIGHT,
    INTERRUPTED,
    PENDING,
    SUCCEEDED,
    WEBHOOK_DISABLED,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    aware,
    endpoint_view,
)

# Spec §11: retried after about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h, ±20 %.
RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
JITTER = 0.2
DISABLE_AFTER = timedelta(days=3)
FAN_OUT_ENDPOINTS = 100
FAN_OUT_EVENTS = 1000
CLAIM_CANDIDATES = 200


def retry_delay(attempts: int, schedule: Sequence[float] = RETRY_SCHEDULE) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones, or None when the
    schedule is spent and the delivery has failed."""
    if attempts < 1 or attempts > len(schedule):
        return None
    base = schedule[attempts - 1]
    return base * random.uniform(1 - JITTER, 1 + JITTER)


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _behind() -> Any:
    return exists().where(
        Event.account_id == WebhookEndpoint.account_id, Event.seq > WebhookEndpoint.cursor_seq
    )


def any_behind(session: Session) -> bool:
    """Whether any enabled endpoint has outbox events not yet turned into deliveries: a read,
    so that an idle pass never takes SQLite's single write lock."""
    found = session.exec(
        select(WebhookEndpoint.id).where(WebhookEndpoint.enabled, _behind()).limit(1)
    ).first()
    return found is not None


def fan_out(session: Session, now: datetime) -> int:
    """Create the deliveries owed for new outbox events; returns how many."""
    query = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.enabled, _behind())
        .order_by(WebhookEndpoint.id)
        .limit(FAN_OUT_ENDPOINTS)
    )
    if not _is_sqlite(session):
        query = query.with_for_update(skip_locked=True, of=WebhookEndpoint)  # type: ignore[arg-type]
    created = 0
    for endpoint in session.exec(query).all():
        rows = session.exec(
            select(Event.seq, Event.type)
            .where(Event.account_id == endpoint.account_id, Event.seq > endpoint.cursor_seq)
            .order_by(Event.seq)  # type: ignore[arg-type]
            .limit(FAN_OUT_EVENTS)
        ).all()
        if not rows:
            continue
        wanted = set(endpoint.events)
        for seq, type_ in rows:
            if type_ not in wanted:
                continue
            session.add(
                WebhookDelivery(
                    id=new_id("msg"),
                    webhook_id=endpoint.id,
                    account_id=endpoint.account_id,
                    type=type_,
                    seq=seq,
                    status=PENDING,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            created += 1
        endpoint.cursor_seq = rows[-1][0]
        session.add(endpoint)
    return created


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed attempt: everything the sender needs, read in the claim's transaction."""

    delivery_id: str
    webhook_id: str
    lease_token: str
    attempt_id: str
    number: int
    url: str
    secrets: list[str]
    payload: dict[str, Any] = field(repr=False)


def _due(now: datetime) -> Any:
    return and_(
        WebhookDelivery.status == PENDING,
        WebhookDelivery.next_attempt_at <= now,  # type: ignore[operator]
        or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until <= now),  # type: ignore[union-attr,operator]
    )


def any_due(session: Session, now: datetime, busy: set[str]) -> bool:
    query = (
        select(WebhookDelivery.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.webhook_id)  # type: ignore[arg-type]
        .where(_due(now), WebhookEndpoint.enabled)
    )
    if busy:
        query = query.where(WebhookDelivery.webhook_id.not_in(sorted(busy)))  # type: ignore[attr-defined]
    return session.exec(query.limit(1)).first() is not None


def claim(
    session: Session,
    now: datetime,
    *,
    slots: int,
    room: dict[str, int],
    per_endpoint: int,
    lease: timedelta,
) -> list[Job]:
    """Lease up to ``slots`` due deliveries, at most ``room.get(id, per_endpoint)`` of each
    endpoint, oldest due first; endpoints with no room left are not even read."""
    full = sorted(k for k, v in room.items() if v <= 0)
    query = (
        select(WebhookDelivery)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.webhook_id)  # type: ignore[arg-type]
        .where(_due(now), WebhookEndpoint.enabled)
        .order_by(WebhookDelivery.next_attempt_at)  # type: ignore[arg-type]
        .limit(CLAIM_CANDIDATES)
    )
    if full:
        query = query.where(WebhookDelivery.webhook_id.not_in(full))  # type: ignore[attr-defined]
    if not _is_sqlite(session):
        query = query.with_for_update(skip_locked=True, of=WebhookDelivery)  # type: ignore[arg-type]
    taken: list[WebhookDelivery] = []
    left = dict(room)
    for delivery in session.exec(query).all():
        if len(taken) >= slots:
            break
        if left.setdefault(delivery.webhook_id, per_endpoint) <= 0:
            continue
        left[delivery.webhook_id] -= 1
        taken.append(delivery)
    if not taken:
        return []
    endpoints = {
        e.id: e
        for e in session.exec(
            select(WebhookEndpoint).where(
                WebhookEndpoint.id.in_(sorted({d.webhook_id for d in taken}))  # type: ignore[attr-defined]
            )
        ).all()
    }
    payloads = _payloads(session, taken)
    # An attempt whose process died is closed now that its lease has run out.
    session.exec(
        update(WebhookAttempt)  # type: ignore[call-overload]
        .where(
            WebhookAttempt.delivery_id.in_([d.id for d in taken]),  # type: ignore[attr-defined]
            WebhookAttempt.outcome == IN_FLIGHT,
        )
        .values(outcome=INTERRUPTED, error="the attempt's process stopped before an answer")
    )
    jobs = []
    until = now + lease
    for delivery in taken:
        endpoint = endpoints[delivery.webhook_id]
        token = secrets.token_hex(16)
        delivery.attempts += 1
        delivery.lease_token = token
        delivery.lease_until = until
        delivery.next_attempt_at = until
        session.add(delivery)
        attempt = WebhookAttempt(
            id=new_id("wha"),
            delivery_id=delivery.id,
            number=delivery.attempts,
            outcome=IN_FLIGHT,
            started_at=now,
        )
        session.add(attempt)
        jobs.append(
            Job(
                delivery_id=delivery.id,
                webhook_id=delivery.webhook_id,
                lease_token=token,
                attempt_id=attempt.id,
                number=delivery.attempts,
                url=endpoint.url,
                secrets=endpoint.secrets_at(now),
                payload=payloads[delivery.id],
            )
        )
    return jobs


def _payloads(session: Session, deliveries: list[WebhookDelivery]) -> dict[str, dict[str, Any]]:
    """The body of each delivery (spec §11): the outbox event as in §8, or the test event."""
    keys = {(d.account_id, d.seq) for d in deliveries if d.seq is not None}
    events: dict[tuple[str, int], Event] = {}
    for account_id in {k[0] for k in keys}:
        seqs = sorted(s for a, s in keys if a == account_id)
        for row in session.exec(
            select(Event).where(Event.account_id == account_id, Event.seq.in_(seqs))  # type: ignore[attr-defined]
        ).all():
            events[(row.account_id, row.seq)] = row
    found: dict[str, dict[str, Any]] = {}
    for d in deliveries:
        if d.seq is None:
            found[d.id] = {
                "type": d.type,
                "timestamp": rfc3339(d.created_at),
                "seq": None,
                "data": {},
            }
        else:
            event = events[(d.account_id, d.seq)]
            found[d.id] = {
                "type": event.type,
                "timestamp": rfc3339(event.created_at),
                "seq": event.seq,
                "data": event.data,
            }
    return found


@dataclass(frozen=True, slots=True)
class Finished:
    """What recording an outcome did: the delivery's new status (None if the lease was lost
    or the endpoint deleted meanwhile) and the events it wrote (an endpoint switched off)."""

    status: str | None
    events: list[Published]


def finish(
    session: Session,
    job: Job,
    *,
    succeeded: bool,
    outcome: str,
    status_code: int | None,
    error: str | None,
    now: datetime,
    schedule: Sequence[float] = RETRY_SCHEDULE,
    disable_after: timedelta = DISABLE_AFTER,
) -> Finished:
    """Record one attempt's outcome. Rows are locked delivery first, then endpoint, then
    account, the order every other writer of these tables keeps."""
    attempt = session.get(WebhookAttempt, job.attempt_id)
    if attempt is not None:
        attempt.outcome = outcome
        attempt.status_code = status_code
        attempt.error = error
        attempt.finished_at = now
        session.add(attempt)
    query = select(WebhookDelivery).where(WebhookDelivery.id == job.delivery_id)
    if not _is_sqlite(session):
        query = query.with_for_update()
    delivery = session.exec(query).first()
    if delivery is None or delivery.lease_token != job.lease_token:
        return Finished(None, [])
    delivery.lease_token = None
    delivery.lease_until = None
    delivery.last_status_code = status_code
    delivery.last_error = error
    published: list[Published] = []
    if succeeded:
        delivery.status = SUCCEEDED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
        # Conditional, so the usual case (not failing) writes and locks nothing.
        session.exec(
            update(WebhookEndpoint)  # type: ignore[call-overload]
            .where(
                WebhookEndpoint.id == delivery.webhook_id,
                WebhookEndpoint.failing_since.is_not(None),  # type: ignore[union-attr]
            )
            .values(failing_since=None)
        )
    else:
        delay = retry_delay(delivery.attempts, schedule)
        if delay is None:
            delivery.status = FAILED
            delivery.next_attempt_at = None
        else:
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        published = _note_failure(session, delivery.webhook_id, now, disable_after)
    session.add(delivery)
    return Finished(delivery.status, published)


def _note_failure(
    session: Session, webhook_id: str, now: datetime, disable_after: timedelta
) -> list[Published]:
    """An endpoint whose every attempt failed for ``disable_after`` is switched off, and its
    account is told by a ``webhook.disabled`` event in its outbox."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.id == webhook_id)
    if not _is_sqlite(session):
        query = query.with_for_update()
    endpoint = session.exec(query).first()
    if endpoint is None:
        return []
    if endpoint.failing_since is None:
        endpoint.failing_since = now
        session.add(endpoint)
        return []
    if not endpoint.enabled or now - aware(endpoint.failing_since) < disable_after:
        return []
    endpoint.enabled = False
    endpoint.updated_at = now
    session.add(endpoint)
    account = lock_accounts(session, {endpoint.account_id})[endpoint.account_id]
    data = {
        **endpoint_view(endpoint),
        "reason": "every delivery attempt failed",
        "failing_since": rfc3339(endpoint.failing_since),
    }
    return [append(session, account, WEBHOOK_DISABLED, data)]


def release(session: Session, jobs: list[Job], now: datetime) -> None:
    """Give back the leases of attempts this process abandons (it is stopping), so another
    process takes them at once instead of after the lease."""
    for job in jobs:
        session.exec(
            update(WebhookDelivery)  # type: ignore[call-overload]
            .where(
                WebhookDelivery.id == job.delivery_id,
                WebhookDelivery.lease_token == job.lease_token,
            )
            .values(lease_token=None, lease_until=None, next_attempt_at=now)
        )
        session.exec(
            update(WebhookAttempt)  # type: ignore[call-overload]
            .where(WebhookAttempt.id == job.attempt_id, WebhookAttempt.outcome == IN_FLIGHT)
            .values(outcome=INTERRUPTED, error="the sending process stopped", finished_at=now)
        )


def oldest_pending(session: Session) -> datetime | None:
    """When the oldest delivery still owed to an enabled endpoint was created."""
    moment = session.exec(
        select(func.min(WebhookDelivery.created_at))
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.webhook_id)  # type: ignore[arg-type]
        .where(WebhookDelivery.status == PENDING, WebhookEndpoint.enabled)
    ).one()
    return aware(moment) if moment is not None else None
