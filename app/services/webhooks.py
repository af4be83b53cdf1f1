"""Webhook endpoints and their deliveries (spec §11), one transaction each.

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
    with state.db.write() as session:
        endpoints.remove(session, account_id, webhook_id)


def rotate(state: AppState, account_id: str, webhook_id: str) -> dict[str, Any]:
    overlap = state.settings.extra.get("webhook_rotation_overlap", endpoints.ROTATION_OVERLAP)
    assert isinstance(overlap, timedelta)
    with state.db.write() as session:
        return endpoints.rotate(session, account_id, webhook_id, overlap)


def send_test(state: AppState, account_id: str, webhook_id: str) -> dict[str, Any]:
    with state.db.write() as session:
        return delivery_view(endpoints.send_test(session, account_id, webhook_id))


def deliveries(
    state: AppState, account_id: str, webhook_id: str, limit: int, cursor: str | None
) -> list[dict[str, Any]]:
    with state.db.read() as session:
        rows = endpoints.deliveries(session, account_id, webhook_id, limit, cursor)
        return [delivery_view(row) for row in rows]


def retry(state: AppState, account_id: str, webhook_id: str, delivery_id: str) -> dict[str, Any]:
    with state.db.write() as session:
        delivery = endpoints.retry(session, account_id, webhook_id, delivery_id)
        return delivery_view(delivery)
