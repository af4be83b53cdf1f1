"""Who is calling: the bearer token of a device, or the admin token."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, bindparam, select
from sqlmodel import Session
from starlette.requests import HTTPConnection

from app.http import in_thread
from app.state import state_of
from models import accounts
from models.accounts import Account, Device
from models.db import Database
from models.errors import Unauthorized

T = TypeVar("T")


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


# accounts.authenticate's query, as plain columns on a connection: it runs on every request,
# and loading the device and account as ORM objects in a session costs five times the query.
_BY_TOKEN_HASH = (
    select(Account.id, Account.handle, Account.display_name, Device.id)
    .join(Account, Account.id == Device.account_id)  # type: ignore[arg-type]
    .where(
        Device.token_hash == bindparam("token_hash"),
        Device.revoked_at.is_(None),  # type: ignore[union-attr]
    )
)


def principal_of(connection: Connection, token: str) -> Principal:
    """The device of a bearer token; Unauthorized if unknown or revoked."""
    if not token or len(token) > 200:
        raise Unauthorized("missing or invalid token")
    row = connection.execute(_BY_TOKEN_HASH, {"token_hash": accounts.hash_token(token)}).first()
    if row is None:
        raise Unauthorized("missing or invalid token")
    account_id, handle, display_name, device_id = row
    return Principal(account_id, handle, display_name, device_id)


def resolve_token(db: Database, token: str) -> Principal:
    with db.reader.connect() as connection:
        return principal_of(connection, token)


async def require_user(conn: HTTPConnection) -> Principal:
    token = bearer_token(conn)
    if token is None:
        raise Unauthorized("missing bearer token")
    return await in_thread(resolve_token, state_of(conn).db, token)


# Checks that belong with the caller's identity (the request's own parts, a limiter's read)
# and may use the read transaction the token was resolved in.
Vet = Callable[[Session, Principal], None]


def run_as(
    db: Database, token: str, vet: Vet | None, fn: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    # One read transaction, rolled back when the connection goes back to the pool.
    with db.reader.connect() as connection:
        who = principal_of(connection, token)
        if vet is not None:
            with Session(bind=connection) as session:
                vet(session, who)
    return fn(who, *args, **kwargs)


async def as_user(
    conn: HTTPConnection,
    fn: Callable[..., T],
    *args: Any,
    vet: Vet | None = None,
    **kwargs: Any,
) -> T:
    """``fn(principal, *args, **kwargs)`` for the bearer token's device, in the same worker-thread
    hop as the token lookup: a request costs one hop, not one for the token and one for its
    work. ``vet`` runs inside the token's read transaction, before ``fn``."""
    token = bearer_token(conn)
    if token is None:
        raise Unauthorized("missing bearer token")
    return await in_thread(run_as, state_of(conn).db, token, vet, fn, *args, **kwargs)


def require_admin(conn: HTTPConnection) -> None:
    expected = state_of(conn).settings.admin_token
    token = bearer_token(conn)
    if expected is None or token is None or not hmac.compare_digest(token, expected):
        raise Unauthorized("admin token required")
