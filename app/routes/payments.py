"""Spec §7: payments, refunds and the payee's CSV export."""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app import observability
from app.auth import Principal, as_user, require_user
from app.http import (
    client_address,
    in_thread,
    later,
    ok,
    page,
    page_params,
    query_choice,
    query_time,
    read_json_later,
)
from app.services import idempotent
from app.services import payments as service
from app.state import state_of
from models.accounts import Party
from models.errors import Invalid
from models.idempotency import validate_key
from models.payments import ROLES, Filters

CSV_HEADER = [
    "id",
    "created_at",
    "status",
    "amount",
    "refunded_amount",
    "currency",
    "payer",
    "payee",
    "agent",
    "code_id",
    "code_label",
    "memo",
]
# A spreadsheet would run a cell starting with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _idempotency_key(request: Request) -> str | None:
    return validate_key(request.headers.get("idempotency-key"))


def _filters(request: Request) -> Filters:
    params = request.query_params
    agent = params.get("agent") or None
    code_id = params.get("code_id") or None
    for name, value in (("agent", agent), ("code_id", code_id)):
        if value is not None and len(value) > 100:
            raise Invalid(f"{name} is too long", field=name)
    return Filters(
        role=query_choice(request, "role", ROLES),
        agent=agent,
        code_id=code_id,
        since=query_time(request, "from"),
        until=query_time(request, "to"),
    )


async def create_payment(request: Request) -> Response:
    key = later(_idempotency_key, request)
    body = await read_json_later(request)
    state = state_of(request)
    async with state.admission.slot():
        who = await require_user(request)
        payer = Party(who.account_id, who.handle, who.display_name)
        # The order of the checks is the order of the answers: token, key, body, then (in
        # the service) the limiter of a payment by code.
        idempotency_key = key.get()
        result = await service.pay(
            state, payer, idempotency_key, body.get(), client_address(request)
        )
    observability.record_committed(result.events)
    await state.publish(result.events)
    return ok(result.body, result.status_code)


async def get_payment(request: Request) -> Response:
    state = state_of(request)
    payment_id = request.path_params["payment_id"]
    return ok(await as_user(request, lambda who: service.get(state, who.account_id, payment_id)))


async def list_payments(request: Request) -> Response:
    filters = later(_filters, request)
    paging = later(page_params, request)
    state = state_of(request)

    def list_visible(who: Principal) -> tuple[list[dict[str, Any]], int]:
        chosen = filters.get()
        limit, cursor = paging.get()
        return service.list_visible(state, who.account_id, chosen, limit, cursor), limit

    rows, limit = await as_user(request, list_visible)
    return ok(page(rows, limit, lambda row: row["id"]))


async def create_refund(request: Request) -> Response:
    key = later(_idempotency_key, request)
    body = await read_json_later(request)
    state = state_of(request)
    payment_id = request.path_params["payment_id"]

    def refund(who: Principal) -> idempotent.Result:
        idempotency_key = key.get()
        return service.refund(state, who.account_id, payment_id, idempotency_key, body.get())

    result = await as_user(request, refund)
    observability.record_committed(result.events)
    await state.publish(result.events)
    return ok(result.body, result.status_code)


def _text_cell(value: str | None) -> str:
    if not value:
        return ""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _csv_line(row: dict[str, Any]) -> list[Any]:
    return [
        row["id"],
        row["created_at"],
        row["status"],
        row["amount"],
        row["refunded_amount"],
        row["currency"],
        row["payer"]["handle"],
        row["payee"]["handle"],
        row["agent"]["handle"] if row["agent"] else "",
        row["code_id"] or "",
        _text_cell(row["code_label"]),
        _text_cell(row["memo"]),
    ]


async def _csv_chunks(pages: Iterator[list[dict[str, Any]]]) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    try:
        rows: list[dict[str, Any]] | None = await in_thread(next, pages)
        while rows is not None:
            writer.writerows(_csv_line(row) for row in rows)
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            rows = await in_thread(next, pages, None)
    finally:
        # A client gone mid-export: give the held connection back now. While a page is
        # being read in a worker thread the generator cannot be closed; it closes itself
        # when that read returns and nothing refers to it any more.
        with contextlib.suppress(ValueError):
            pages.close()


async def export_csv(request: Request) -> Response:
    who = await require_user(request)
    filters = _filters(request)
    chunks = _csv_chunks(service.csv_pages(state_of(request), who.account_id, filters))
    # The first page is read before the status line is sent, so what can go wrong with it
    # (a value the database refuses, no connection to be had) is still a 4xx or a 503.
    first = await anext(chunks)

    async def body() -> AsyncIterator[str]:
        yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="payments.csv"'},
    )


routes = [
    # Before /payments/{payment_id}, so the export is never read as a payment id.
    Route("/payments.csv", export_csv, methods=["GET"]),
    Route("/payments", create_payment, methods=["POST"]),
    Route("/payments", list_payments, methods=["GET"]),
    Route("/payments/{payment_id}", get_payment, methods=["GET"]),
    Route("/payments/{payment_id}/refunds", create_refund, methods=["POST"]),
]
