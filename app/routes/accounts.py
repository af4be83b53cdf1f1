"""Spec §3: accounts, sessions and devices."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.auth import require_user
from app.http import client_address, in_thread, no_content, ok, read_json
from app.services import accounts as service
from app.state import state_of


async def create_account(request: Request) -> Response:
    body = await read_json(request)
    return ok(await in_thread(service.sign_up, state_of(request), body), 201)


async def create_session(request: Request) -> Response:
    body = await read_json(request)
    result = await in_thread(service.log_in, state_of(request), body, client_address(request))
    return ok(result, 201)


async def get_me(request: Request) -> Response:
    who = await require_user(request)
    return ok(await in_thread(service.me, state_of(request), who.account_id, who.device_id))


async def get_account(request: Request) -> Response:
    await require_user(request)
    handle = request.path_params["handle"]
    return ok(await in_thread(service.public_profile, state_of(request), handle))


async def list_devices(request: Request) -> Response:
    who = await require_user(request)
    devices = await in_thread(service.list_devices, state_of(request), who.account_id)
    return ok({"data": devices, "next_cursor": None})


async def delete_device(request: Request) -> Response:
    who = await require_user(request)
    state = state_of(request)
    device_id = request.path_params["device_id"]
    await in_thread(service.revoke_device, state, who.account_id, device_id)
    await state.hub.revoke_device(who.account_id, device_id)
    return no_content()


async def delete_current_session(request: Request) -> Response:
    who = await require_user(request)
    state = state_of(request)
    await in_thread(service.revoke_device, state, who.account_id, who.device_id)
    await state.hub.revoke_device(who.account_id, who.device_id)
    return no_content()


routes = [
    Route("/accounts", create_account, methods=["POST"]),
    Route("/accounts/{handle}", get_account, methods=["GET"]),
    Route("/sessions", create_session, methods=["POST"]),
    Route("/sessions/current", delete_current_session, methods=["DELETE"]),
    Route("/me", get_me, methods=["GET"]),
    Route("/devices", list_devices, methods=["GET"]),
    Route("/devices/{device_id}", delete_device, methods=["DELETE"]),
]
