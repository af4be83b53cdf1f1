"""Agencies (spec §5): open, accept, revoke, list."""

from __future__ import annotations

from typing import Any

from app.state import AppState
from models import accounts, agencies, codes
from models.events import Published

Outcome = tuple[dict[str, Any], list[Published]]


def create(state: AppState, caller_id: str, body: dict[str, Any]) -> Outcome:
    with state.db.write() as session:
        caller = session.get(accounts.Account, caller_id)
        assert caller is not None
        return agencies.create(session, caller, body)


def accept(state: AppState, caller_id: str, agency_id: str) -> Outcome:
    with state.db.write() as session:
        return agencies.accept(session, caller_id, agency_id)


def revoke(state: AppState, caller_id: str, agency_id: str) -> Outcome:
    with state.db.write() as session:
        outcome = agencies.revoke(session, caller_id, agency_id)
        codes.revoke_unpaid_of_agency(session, agency_id)
        return outcome


def list_for(
    state: AppState,
    caller_id: str,
    role: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> list[dict[str, Any]]:
    with state.db.read() as session:
        return agencies.list_for(session, caller_id, role, status, limit, cursor)
