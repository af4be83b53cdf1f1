"""Spec §6: collection codes, the payer's scan, and the code images (C7)."""

from __future__ import annotations

from functools import partial

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import ratelimit, render
from app.auth import require_user
from app.http import (
    client_address,
    in_thread,
    ok,
    page,
    page_params,
    query_choice,
    query_int,
    read_json,
)
from app.services import codes as service
from app.state import state_of
from models.codes import STATUSES
from models.idempotency import validate_key

# An image shows only the token or short code, which never change, but only its parties may
# fetch it: cacheable for a day, never by a shared cache.
IMAGE_CACHE = "private, max-age=86400"


async def create_code(request: Request) -> Response:
    who = await require_user(request)
    key = validate_key(request.headers.get("idempotency-key"))
    body = await read_json(request)
    state = state_of(request)
    result = await in_thread(service.create, state, who.account_id, body, key)
    await state.publish(result.events)
    return ok(result.body, result.status_code)


async def list_codes(request: Request) -> Response:
    who = await require_user(request)
    role = query_choice(request, "role", ("agent", "payee"))
    status = query_choice(request, "status", STATUSES)
    limit, cursor = page_params(request)
    rows = await in_thread(
        service.list_for, state_of(request), who.account_id, role, status, limit, cursor
    )
    return ok(page(rows, limit, lambda row: row["id"]))


async def get_code(request: Request) -> Response:
    who = await require_user(request)
    code_id = request.path_params["code_id"]
    return ok(await in_thread(service.get, state_of(request), who.account_id, code_id))


async def cancel_code(request: Request) -> Response:
    who = await require_user(request)
    state = state_of(request)
    code_id = request.path_params["code_id"]
    view, events = await in_thread(service.cancel, state, who.account_id, code_id)
    await state.publish(events)
    return ok(view)


async def scan_code(request: Request) -> Response:
    who = await require_user(request)
    typed = request.path_params["typed"]
    state = state_of(request)
    lookup = partial(service.scan, state, typed)
    client = client_address(request)
    return ok(await in_thread(ratelimit.guarded, state, who.account_id, client, lookup, None))


def _image(content: bytes, media_type: str) -> Response:
    return Response(content, media_type=media_type, headers={"Cache-Control": IMAGE_CACHE})


def _scale(request: Request) -> int:
    scale = query_int(
        request,
        "scale",
        default=render.DEFAULT_SCALE,
        low=render.MIN_SCALE,
        high=render.MAX_SCALE,
    )
    assert scale is not None
    return scale


async def qr_svg(request: Request) -> Response:
    who = await require_user(request)
    scale = _scale(request)
    code_id = request.path_params["code_id"]
    image = await in_thread(service.qr, state_of(request), who.account_id, code_id, "svg", scale)
    return _image(image, "image/svg+xml")


async def qr_png(request: Request) -> Response:
    who = await require_user(request)
    scale = _scale(request)
    code_id = request.path_params["code_id"]
    image = await in_thread(service.qr, state_of(request), who.account_id, code_id, "png", scale)
    return _image(image, "image/png")


async def barcode_svg(request: Request) -> Response:
    who = await require_user(request)
    code_id = request.path_params["code_id"]
    image = await in_thread(service.barcode, state_of(request), who.account_id, code_id)
    return _image(image, "image/svg+xml")


routes = [
    Route("/codes", create_code, methods=["POST"]),
    Route("/codes", list_codes, methods=["GET"]),
    Route("/codes/{code_id}", get_code, methods=["GET"]),
    Route("/codes/{code_id}/cancel", cancel_code, methods=["POST"]),
    Route("/codes/{code_id}/qr.svg", qr_svg, methods=["GET"]),
    Route("/codes/{code_id}/qr.png", qr_png, methods=["GET"]),
    Route("/codes/{code_id}/barcode.svg", barcode_svg, methods=["GET"]),
    Route("/scan/{typed}", scan_code, methods=["GET"]),
]
