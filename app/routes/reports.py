"""Spec §7: the payee's books per agent and per code (C5)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.auth import require_user
from app.http import in_thread, ok, page_params, query_time
from app.services import payments as service
from app.state import state_of
from models.errors import Invalid


async def agents_report(request: Request) -> Response:
    who = await require_user(request)
    since, until = query_time(request, "from"), query_time(request, "to")
    limit, cursor = page_params(request)
    # The rows are aggregates in a fixed order, so the cursor is the offset of the next one.
    if cursor is not None and not (cursor.isascii() and cursor.isdigit()):
        raise Invalid("cursor is not valid", field="cursor")
    start = int(cursor) if cursor else 0
    rows = await in_thread(service.report, state_of(request), who.account_id, since, until)
    more = len(rows) > start + limit
    return ok(
        {"data": rows[start : start + limit], "next_cursor": str(start + limit) if more else None}
    )


routes = [Route("/reports/agents", agents_report, methods=["GET"])]
