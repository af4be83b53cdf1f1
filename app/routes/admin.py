"""Spec §4: the admin API (funding deposits), behind the admin token."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.auth import require_admin
from app.http import in_thread, ok, read_json
from app.services import deposits
from app.state import state_of


async def create_deposit(request: Request) -> Response:
    require_admin(request)
    body = await read_json(request)
    state = state_of(request)
    view, events = await in_thread(deposits.deposit, state, body.get("handle"), body.get("amount"))
    await state.publish(events)
    return ok(view, 201)


routes = [Route("/admin/deposits", create_deposit, methods=["POST"])]
