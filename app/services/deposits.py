"""Money in (spec §4): admin API and CLI share this."""

from __future__ import annotations

from typing import Any

from app.settings import Settings
from app.state import AppState
from models import ledger
from models.events import Published


def deposit(state: AppState, handle: Any, amount: Any) -> tuple[dict[str, Any], list[Published]]:
    with state.db.write() as session:
        return ledger.deposit(session, handle, amount, state.settings.currency)


def deposit_now(settings: Settings, handle: str, amount: int) -> dict[str, Any]:
    """The CLI's deposit: its own connection, and its events left to the outbox relay of
    whichever server is running (this process has no sockets to push to)."""
    from models.db import Database

    db = Database(settings.database_url, pool_size=1)
    try:
        with db.write() as session:
            view, _events = ledger.deposit(session, handle, amount, settings.currency)
            return view
    finally:
        db.dispose()
