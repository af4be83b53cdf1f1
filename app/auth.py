"""Who is calling: the bearer token of a device, or the admin token."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from app.http import in_thread
from app.state import state_of
from models import accounts
from models.errors import Unauthorized


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: str
    handle: str
    display_name: str
    device_id: str


def bearer_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def resolve_token(db_read: object, token: str) -> Principal:
    with db_read() as session:  # type: ignore[operator]
        account, device = accounts.authenticate(session, token)
        return Principal(account.id, account.handle, account.display_name, device.id)


async def require_user(conn: HTTPConnection) -> Principal:
    token = bearer_token(conn)
    if token is None:
        raise Unauthorized("missing bearer token")
    return await in_thread(resolve_token, state_of(conn).db.read, token)


def require_admin(conn: HTTPConnection) -> None:
    expected = state_of(conn).settings.admin_token
    token = bearer_token(conn)
    if expected is None or token is None or not hmac.compare_digest(token, expected):
        raise Unauthorized("admin token required")
