"""Sign-up, login per device (C1), devices and logout."""

from __future__ import annotations

from typing import Any

from app.state import AppState
from models import accounts
from models.clock import utcnow
from models.errors import InvalidCredentials


def sign_up(state: AppState, body: dict[str, Any]) -> dict[str, Any]:
    with state.db.write() as session:
        account = accounts.sign_up(
            session, body.get("handle"), body.get("display_name"), body.get("password")
        )
        return accounts.account_view(account, state.settings.currency)


def log_in(state: AppState, body: dict[str, Any], client: str) -> dict[str, Any]:
    raw_handle = body.get("handle")
    password = body.get("password")
    if not isinstance(raw_handle, str) or not isinstance(password, str):
        raise InvalidCredentials("wrong handle or password")
    handle = raw_handle.strip().lower()[:100]
    with state.db.read() as session:
        accounts.check_login_allowed(session, handle, client)
        account = accounts.find_by_handle(session, handle)
    # Argon2 runs outside any transaction so a slow hash never holds the SQLite write lock.
    if not accounts.verify_password(account, password):
        with state.db.write() as session:
            accounts.record_login_failure(session, handle, client)
        raise InvalidCredentials("wrong handle or password")
    assert account is not None
    with state.db.write() as session:
        device, token = accounts.create_device(session, account, body.get("device_name"))
        return {
            "token": token,
            "device": accounts.device_view(device),
            "account": accounts.account_view(account, state.settings.currency),
        }


def me(state: AppState, account_id: str, device_id: str) -> dict[str, Any]:
    """The account, and the calling device marked as seen (every page asks this at start)."""
    now = utcnow()
    with state.db.read() as session:
        account = session.get(accounts.Account, account_id)
        assert account is not None
        view = accounts.account_view(account, state.settings.currency)
        stale = accounts.seen_is_stale(session.get(accounts.Device, device_id), now)
    # The write is taken only when the mark is due: a read costs no write lock.
    if stale:
        with state.db.write() as session:
            accounts.mark_seen(session, device_id, now)
    return view


def public_profile(state: AppState, handle: str) -> dict[str, Any]:
    with state.db.read() as session:
        return accounts.public_view(accounts.get_by_handle(session, handle, field="handle"))


def list_devices(state: AppState, account_id: str) -> list[dict[str, Any]]:
    with state.db.read() as session:
        return [accounts.device_view(d) for d in accounts.list_devices(session, account_id)]


def revoke_device(state: AppState, account_id: str, device_id: str) -> None:
    with state.db.write() as session:
        accounts.revoke_device(session, account_id, device_id)
