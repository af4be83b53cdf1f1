"""Who is calling: the bearer token of a device, or the admin token."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import HTTPConnection

from app.http import in_thread
from app.state import state_of
from app.tokens import TokenCache
from models import accounts
from models.db import Database
from models.errors import Unauthorized
from models.sql import Tx

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


# accounts.authenticate's query in hand-written SQL: it runs on every request, and loading
# the device and account as ORM objects in a session costs several times the query.
_BY_TOKEN_HASH = (
    "SELECT account.id, account.handle, account.display_name, device.id"
    " FROM device JOIN account ON account.id = device.account_id"
    " WHERE device.token_hash = ? AND device.revoked_at IS NULL"
)


def _token_hash(token: str) -> str:
    if not token or len(token) > 200:
        raise Unauthorized("missing or invalid token")
    return accounts.hash_token(token)


def _read(tx: Tx, token_hash: str) -> Principal:
    row = tx.one(_BY_TOKEN_HASH, (token_hash,))
    if row is None:
        raise Unauthorized("missing or invalid token")
    account_id, handle, display_name, device_id = row
    return Principal(account_id, handle, display_name, device_id)


def principal_of(tx: Tx, token: str) -> Principal:
    """The device of a bearer token; Unauthorized if unknown or revoked."""
    return _read(tx, _token_hash(token))


def _remembered(tx: Tx, tokens: TokenCache, token_hash: str) -> Principal:
    read_at = time.monotonic()
    who = _read(tx, token_hash)
    tokens.put(token_hash, who, read_at)
    return who


def resolve_token(db: Database, token: str) -> Principal:
    with db.raw_read() as tx:
        return principal_of(tx, token)


def _resolve_hash(db: Database, tokens: TokenCache, token_hash: str) -> Principal:
    with db.raw_read() as tx:
        return _remembered(tx, tokens, token_hash)


async def require_user(conn: HTTPConnection) -> Principal:
    """The caller's device: from the token cache when it knows the token (no database read and
    no thread hop), else read and remembered."""
    token = bearer_token(conn)
    if token is None:
        raise Unauthorized("missing bearer token")
    state = state_of(conn)
    token_hash = _token_hash(token)
    who: Principal | None = state.tokens.get(token_hash)
    if who is not None:
        return who
    return await in_thread(_resolve_hash, state.db, state.tokens, token_hash)


# Checks that belong with the caller's identity (the request's own parts, a limiter's read)
# and may use the read connection the token was resolved on.
Vet = Callable[[Tx, Principal], None]


def run_as(
    db: Database,
    tokens: TokenCache,
    token: str,
    vet: Vet | None,
    fn: Callable[..., T],
    *args: Any,
    **kwargs: Any,
) -> T:
    token_hash = _token_hash(token)
    who: Principal | None = tokens.get(token_hash)
    if who is None or vet is not None:
        # One read connection, reset when it goes back to the pool.
        with db.raw_read() as tx:
            if who is None:
                who = _remembered(tx, tokens, token_hash)
            if vet is not None:
                vet(tx, who)
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
    work. The token comes from the cache when it can. ``vet`` runs inside a read transaction,
    before ``fn``."""
    token = bearer_token(conn)
    if token is None:
        raise Unauthorized("missing bearer token")
    state = state_of(conn)
    return await in_thread(run_as, state.db, state.tokens, token, vet, fn, *args, **kwargs)


def require_admin(conn: HTTPConnection) -> None:
    expected = state_of(conn).settings.admin_token
    token = bearer_token(conn)
    if expected is None or token is None or not hmac.compare_digest(token, expected):
        raise Unauthorized("admin token required")
