"""Spec §6: collection codes, the payer's scan, and the code images (C7)."""

from __future__ import annotations

from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import ratelimit, render
from app.auth import Principal, as_user, require_user
from app.http import (
    client_address,
    later,
    ok,
    page,
    page_params,
    query_choice,
    query_int,
    read_json_later,
)
from app.services import codes as service
from app.state import state_of
from models.codes import STATUSES
from models.idempotency import validate_key
from models.sql import Tx

# An image shows only the token or short code, which never change, but only its parties may
# fetch it: cacheable for a day, never by a shared cache.
IMAGE_CACHE = "private, max-age=86400"


async def create_code(request: Request) -> Response:
    key = later(validate_key, request.headers.get("idempotency-key"))
    body = await read_json_later(request)
    state = state_of(request)
    async with state.admission.slot():
        who = await require_user(request)
        idempotency_key = key.get()
        result = await service.create(state, who.account_id, body.get(), idempotency_key)
    await state.publish(result.events)
    return ok(result.body, result.status_code)


async def list_codes(request: Request) -> Response:
    role = later(query_choice, request, "role", ("agent", "payee"))
    status = later(query_choice, request, "status", STATUSES)
    paging = later(page_params, request)
    state = state_of(request)

    def list_for(who: Principal) -> tuple[list[dict[str, Any]], int]:
        role_value, status_value = role.get(), status.get()
        limit, cursor = paging.get()
        rows = service.list_for(state, who.account_id, role_value, status_value, limit, cursor)
        return rows, limit

    rows, limit = await as_user(request, list_for)
    return ok(page(rows, limit, lambda row: row["id"]))


async def get_code(request: Request) -> Response:
    state = state_of(request)
    code_id = request.path_params["code_id"]
    return ok(await as_user(request, lambda who: service.get(state, who.account_id, code_id)))


async def cancel_code(request: Request) -> Response:
    state = state_of(request)
    code_id = request.path_params["code_id"]
    view, events = await as_user(
        request, lambda who: service.cancel(state, who.account_id, code_id)
    )
    await state.publish(events)
    return ok(view)


async def scan_code(request: Request) -> Response:
    typed = request.path_params["typed"]
    state = state_of(request)
    client = client_address(request)
    lookup = partial(service.scan, state, typed)

    def vet(tx: Tx, who: Principal) -> None:
        ratelimit.check(state, who.account_id, client, tx)

    def scan(who: Principal) -> dict[str, Any]:
        with ratelimit.checked(who.account_id, client):
            return ratelimit.guarded(state, who.account_id, client, lookup, None)

    return ok(await as_user(request, scan, vet=vet))


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


async def _qr(request: Request, kind: str) -> bytes:
    scale = later(_scale, request)
    state = state_of(request)
    code_id = request.path_params["code_id"]

    def render_qr(who: Principal) -> bytes:
        return service.qr(state, who.account_id, code_id, kind, scale.get())

    return await as_user(request, render_qr)


async def qr_svg(request: Request) -> Response:
    return _image(await _qr(request, "svg"), "image/svg+xml")


async def qr_png(request: Request) -> Response:
    return _image(await _qr(request, "png"), "image/png")


async def barcode_svg(request: Request) -> Response:
    state = state_of(request)
    code_id = request.path_params["code_id"]
    image = await as_user(request, lambda who: service.barcode(state, who.account_id, code_id))
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
