"""Spec §8: the account's outbox, oldest first, by gapless seq."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.auth import require_user
from app.http import DEFAULT_LIMIT, MAX_LIMIT, in_thread, ok, query_int
from app.state import AppState, state_of
from models import events
from models.errors import Invalid

# event.seq is a 32-bit INTEGER column: a larger bound would reach PostgreSQL and fail there.
MAX_SEQ = 2**31 - 1


def _after(request: Request) -> int:
    after = query_int(request, "after", default=0, low=0, high=MAX_SEQ)
    # ?cursor= is the list convention's name for the same position (the last seq seen).
    cursor = request.query_params.get("cursor")
    if cursor:
        if not (cursor.isascii() and cursor.isdigit()) or int(cursor) > MAX_SEQ:
            raise Invalid("cursor is not valid", field="cursor")
        after = max(after or 0, int(cursor))
    return after or 0


def _read(state: AppState, account_id: str, after: int, limit: int) -> list[dict[str, object]]:
    with state.db.read() as session:
        rows = events.list_after(session, account_id, after, limit + 1)
        return [events.event_view(row) for row in rows]


async def list_events(request: Request) -> Response:
    who = await require_user(request)
    after = _after(request)
    limit = query_int(request, "limit", default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    assert limit is not None
    rows = await in_thread(_read, state_of(request), who.account_id, after, limit)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = str(rows[-1]["seq"]) if more and rows else None
    return ok({"data": rows, "next_cursor": next_cursor})


routes = [Route("/events", list_events, methods=["GET"])]
