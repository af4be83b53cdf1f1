"""Spec §11: webhook endpoints, their deliveries, test events and manual retries."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.auth import require_user
from app.http import in_thread, no_content, ok, page, page_params, read_json
from app.services import webhooks as service
from app.state import state_of


def _wake(request: Request) -> None:
    """A delivery made due by this request goes out now, not at the worker's next pass."""
    worker = getattr(request.app.state, "webhooks", None)
    if worker is not None:
        worker.wake()


async def create_webhook(request: Request) -> Response:
    who = await require_user(request)
    body = await read_json(request)
    state = state_of(request)
    url = await service.checked_url(state, body.get("url"))
    view = await in_thread(service.create, state, who.account_id, url, body)
    return ok(view, 201)


async def list_webhooks(request: Request) -> Response:
    who = await require_user(request)
    limit, cursor = page_params(request)
    rows = await in_thread(service.list_for, state_of(request), who.account_id, limit, cursor)
    return ok(page(rows, limit, lambda row: row["id"]))


async def get_webhook(request: Request) -> Response:
    who = await require_user(request)
    webhook_id = request.path_params["webhook_id"]
    return ok(await in_thread(service.get, state_of(request), who.account_id, webhook_id))


async def update_webhook(request: Request) -> Response:
    who = await require_user(request)
    body = await read_json(request)
    state = state_of(request)
    webhook_id = request.path_params["webhook_id"]
    # An unknown or foreign id is 404 before the URL is looked at.
    await in_thread(service.get, state, who.account_id, webhook_id)
    url = await service.checked_url(state, body["url"]) if "url" in body else None
    view = await in_thread(service.update, state, who.account_id, webhook_id, url, body)
    return ok(view)


async def delete_webhook(request: Request) -> Response:
    who = await require_user(request)
    webhook_id = request.path_params["webhook_id"]
    await in_thread(service.remove, state_of(request), who.account_id, webhook_id)
    return no_content()


async def rotate_secret(request: Request) -> Response:
    who = await require_user(request)
    webhook_id = request.path_params["webhook_id"]
    return ok(await in_thread(service.rotate, state_of(request), who.account_id, webhook_id))


async def send_test(request: Request) -> Response:
    who = await require_user(request)
    webhook_id = request.path_params["webhook_id"]
    view = await in_thread(service.send_test, state_of(request), who.account_id, webhook_id)
    _wake(request)
    return ok(view, 202)


async def list_deliveries(request: Request) -> Response:
    who = await require_user(request)
    limit, cursor = page_params(request)
    webhook_id = request.path_params["webhook_id"]
    rows = await in_thread(
        service.deliveries, state_of(request), who.account_id, webhook_id, limit, cursor
    )
    return ok(page(rows, limit, lambda row: row["id"]))


async def retry_delivery(request: Request) -> Response:
    who = await require_user(request)
    state = state_of(request)
    webhook_id = request.path_params["webhook_id"]
    delivery_id = request.path_params["delivery_id"]
    view = await in_thread(service.retry, state, who.account_id, webhook_id, delivery_id)
    _wake(request)
    return ok(view, 202)


routes = [
    Route("/webhooks", create_webhook, methods=["POST"]),
    Route("/webhooks", list_webhooks, methods=["GET"]),
    Route("/webhooks/{webhook_id}", get_webhook, methods=["GET"]),
    Route("/webhooks/{webhook_id}", update_webhook, methods=["PATCH"]),
    Route("/webhooks/{webhook_id}", delete_webhook, methods=["DELETE"]),
    Route("/webhooks/{webhook_id}/rotate-secret", rotate_secret, methods=["POST"]),
    Route("/webhooks/{webhook_id}/test", send_test, methods=["POST"]),
    Route("/webhooks/{webhook_id}/deliveries", list_deliveries, methods=["GET"]),
    Route(
        "/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"]
    ),
]
