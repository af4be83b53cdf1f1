"""Spec §7: the platform's receipt keys (public) and checking a receipt."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.auth import require_user
from app.http import in_thread, ok, read_json
from app.services import payments as service
from app.state import state_of
from models.errors import Invalid


async def list_keys(request: Request) -> Response:
    keys = await in_thread(service.receipt_keys, state_of(request))
    return ok({"data": keys, "next_cursor": None})


async def verify(request: Request) -> Response:
    await require_user(request)
    body = await read_json(request)
    receipt = body.get("receipt")
    if not isinstance(receipt, dict):
        raise Invalid("receipt must be the receipt object of a payment", field="receipt")
    return ok(await in_thread(service.verify_receipt, state_of(request), receipt))


routes = [
    Route("/receipts/keys", list_keys, methods=["GET"]),
    Route("/receipts/verify", verify, methods=["POST"]),
]
