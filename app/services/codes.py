"""Collection codes (spec §6): issue, list, show, cancel, scan, and their images."""

from __future__ import annotations

from typing import Any

from app import render
from app.ratelimit import Check
from app.services import idempotent
from app.state import AppState
from models import codes, issuance, shortcodes
from models.events import Published
from models.idempotency import Claim
from models.sql import Tx

Outcome = tuple[dict[str, Any], list[Published]]
CREATE_SCOPE = "POST /codes"


def _presentation(state: AppState) -> dict[str, str]:
    return {"public_url": state.settings.public_url, "currency": state.settings.currency}


async def create(
    state: AppState, caller_id: str, body: dict[str, Any], key: str | None
) -> idempotent.Result:
    """A code under its ``Idempotency-Key``, awaited on the event loop with no worker thread
    between: on SQLite in the group commit, on PostgreSQL in one statement over the loop's
    pool."""
    presentation = _presentation(state)
    if state.db.is_sqlite:

        def operation(tx: Tx) -> tuple[int, Any, list[Published]]:
            view, events = issuance.issue(tx, caller_id, body, **presentation)
            return 201, view, events

        return await idempotent.run_in_group(state, caller_id, CREATE_SCOPE, key, body, operation)

    def in_server(tx: Tx, claim: Claim | None, _: Check | None) -> tuple[int, Any, list[Published]]:
        return issuance.issue_in_server(
            tx, caller_id, body, claim, state.known_agencies, **presentation
        )

    return await idempotent.run_in_server(state, caller_id, CREATE_SCOPE, key, body, in_server)


def get(state: AppState, caller_id: str, code_id: str) -> dict[str, Any]:
    with state.db.read() as session:
        code = codes.get_visible(session, caller_id, code_id)
        return codes.view(session, code, **_presentation(state))


def cancel(state: AppState, caller_id: str, code_id: str) -> Outcome:
    with state.db.write() as session:
        return codes.cancel(session, caller_id, code_id, **_presentation(state))


def list_for(
    state: AppState,
    caller_id: str,
    role: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> list[dict[str, Any]]:
    with state.db.read() as session:
        return codes.list_for(
            session, caller_id, role, status, limit, cursor, **_presentation(state)
        )


def scan(state: AppState, typed: str) -> dict[str, Any]:
    with state.db.read() as session:
        return codes.scan(session, typed, currency=state.settings.currency)


def _visible(state: AppState, caller_id: str, code_id: str) -> codes.Code:
    with state.db.read() as session:
        return codes.get_visible(session, caller_id, code_id)


def qr(state: AppState, caller_id: str, code_id: str, kind: str, scale: int) -> bytes:
    """The QR image of the code's URL, read and rendered in one worker-thread hop."""
    content = codes.url_of(_visible(state, caller_id, code_id), state.settings.public_url)
    if kind == "png":
        return render.qr_png(content, scale)
    return render.qr_svg(content, scale)


def barcode(state: AppState, caller_id: str, code_id: str) -> bytes:
    code = _visible(state, caller_id, code_id)
    return render.barcode_svg(shortcodes.display(code.short_code))
