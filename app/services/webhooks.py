"""Webhook endpoints and their deliveries (spec §11). A change of an endpoint is one
transaction; what touches the delivery queue's tables is a transaction of their own (on
SQLite they are in a file of their own, models/db.py), after a read of the endpoint: an
endpoint deleted in between leaves queue rows that no worker sends and the next claim of
them deletes.

The URL's address check (DNS) happens before the transaction, in :func:`checked_url`, so no
database connection waits on a name server."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from app.state import AppState
from app.webhooks.addresses import RefusedAddress, Resolver, check_url, system_resolver
from models import webhook_endpoints as endpoints
from models.errors import Invalid
from models.webhooks import delivery_view


def resolver_of(state: AppState) -> Resolver:
    found = state.settings.extra.get("webhook_resolver", system_resolver)
    return found  # type: ignore[no-any-return]


async def checked_url(state: AppState, url: object) -> str:
    try:
        return await check_url(
            url,
            allow_private=state.settings.webhook_allow_private,
            resolver=resolver_of(state),
        )
    except RefusedAddress as exc:
        raise Invalid(str(exc), field="url") from exc


def create(state: AppState, account_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    with state.db.write() as session:
        return endpoints.create(session, account_id, url, body)


def list_for(
    state: AppState, account_id: str, limit: int, cursor: str | None
) -> list[dict[str, Any]]:
    with state.db.read() as session:
        return endpoints.list_for(session, account_id, limit, cursor)


def get(state: AppState, account_id: str, webhook_id: str) -> dict[str, Any]:
    with state.db.read() as session:
        return endpoints.get(session, account_id, webhook_id)


def update(
    state: AppState, account_id: str, webhook_id: str, url: str | None, body: dict[str, Any]
) -> dict[str, Any]:
    with state.db.write() as session:
        return endpoints.update(session, account_id, webhook_id, url, body)


def remove(state: AppState, account_id: str, webhook_id: str) -> None:
    db = state.db
    with db.write() as session:
        removed = endpoints.remove(session, account_id, webhook_id)
        if not db.queue_apart:
            endpoints.forget(session, removed)
    if db.queue_apart:
        # A second transaction, of the queue's own file (SQLite): a crash between the two
        # leaves rows of an endpoint that no longer exists: none is sent, and a claim of one
        # deletes it.
        with db.queue_write() as queue_session:
            endpoints.forget(queue_session, removed)


def rotate(state: AppState, account_id: str, webhook_id: str) -> dict[str, Any]:
    overlap = state.settings.extra.get("webhook_rotation_overlap", endpoints.ROTATION_OVERLAP)
    assert isinstance(overlap, timedelta)
    with state.db.write() as session:
        return endpoints.rotate(session, account_id, webhook_id, overlap)


def send_test(state: AppState, account_id: str, webhook_id: str) -> dict[str, Any]:
    with state.db.read() as session:
        endpoint = endpoints.testable(session, account_id, webhook_id)
    with state.db.queue_write() as queue_session:
        return delivery_view(endpoints.send_test(queue_session, endpoint))


def deliveries(
    state: AppState, account_id: str, webhook_id: str, limit: int, cursor: str | None
) -> list[dict[str, Any]]:
    with state.db.read() as session:
        rows = endpoints.deliveries(session, account_id, webhook_id, limit, cursor)
        return [delivery_view(row) for row in rows]


def retry(state: AppState, account_id: str, webhook_id: str, delivery_id: str) -> dict[str, Any]:
    with state.db.read() as session:
        endpoints.owned(session, account_id, webhook_id)
    with state.db.queue_write() as queue_session:
        delivery = endpoints.retry(queue_session, webhook_id, delivery_id)
        return delivery_view(delivery)
