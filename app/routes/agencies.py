"""Spec §5: agencies."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.auth import require_user
from app.http import in_thread, ok, page, page_params, query_choice, read_json
from app.services import agencies as service
from app.state import state_of
from models.agencies import STATUSES


async def create_agency(request: Request) -> Response:
    who = await require_user(request)
    body = await read_json(request)
    state = state_of(request)
    view, events = await in_thread(service.create, state, who.account_id, body)
    await state.publish(events)
    return ok(view, 201)


async def accept_agency(request: Request) -> Response:
    who = await require_user(request)
    state = state_of(request)
    agency_id = request.path_params["agency_id"]
    view, events = await in_thread(service.accept, state, who.account_id, agency_id)
    await state.publish(events)
    return ok(view)


async def revoke_agency(request: Request) -> Response:
    who = await require_user(request)
    state = state_of(request)
    agency_id = request.path_params["agency_id"]
    view, events = await in_thread(service.revoke, state, who.account_id, agency_id)
    await state.publish(events)
    return ok(view)


async def list_agencies(request: Request) -> Response:
    who = await require_user(request)
    role = query_choice(request, "role", ("agent", "payee"))
    status = query_choice(request, "status", STATUSES)
    limit, cursor = page_params(request)
    rows = await in_thread(
        service.list_for, state_of(request), who.account_id, role, status, limit, cursor
    )
    return ok(page(rows, limit, lambda row: row["id"]))


routes = [
    Route("/agencies", create_agency, methods=["POST"]),
    Route("/agencies", list_agencies, methods=["GET"]),
    Route("/agencies/{agency_id}/accept", accept_agency, methods=["POST"]),
    Route("/agencies/{agency_id}/revoke", revoke_agency, methods=["POST"]),
]
