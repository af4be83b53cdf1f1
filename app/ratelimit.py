"""The short-code limiter around code lookups: a payer's scan and a payment by code.

A lookup is refused with 429 while the caller's account or address has too many recent
failures; a lookup that names no code counts one failure, in a transaction of its own so the
count survives the refusal it accompanies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol, TypeVar

from app.http import in_thread
from app.state import AppState
from models import ratelimit
from models.errors import DomainError, NotFound
from models.sql import Tx

T = TypeVar("T")

# (account, client) whose limiter check this request already made, in the read transaction
# that resolved its token: the lookup then skips a transaction of its own for the same check.
_checked: ContextVar[tuple[str, str] | None] = ContextVar("paycode_lookup_checked", default=None)


def check(state: AppState, account_id: str, client: str, tx: Tx | None = None) -> None:
    if tx is not None:
        ratelimit.check(tx, account_id, client, _limits(state))
        return
    with state.db.raw_read() as own:
        ratelimit.check(own, account_id, client, _limits(state))


@contextmanager
def checked(account_id: str, client: str) -> Iterator[None]:
    """Within the block, :func:`guarded` trusts that :func:`check` just passed for this caller
    and address (the caller made it, in the same request, before the lookup)."""
    token = _checked.set((account_id, client))
    try:
        yield
    finally:
        _checked.reset(token)


def record_failure(state: AppState, account_id: str, client: str) -> None:
    with state.db.write() as session:
        ratelimit.record(session, account_id, client, _limits(state))


def is_unknown_code(error: DomainError | None, field: str | None) -> bool:
    return isinstance(error, NotFound) and error.field == field


def guarded(
    state: AppState, account_id: str, client: str, lookup: Callable[[], T], field: str | None
) -> T:
    """Run lookup under the limiter; a NotFound for ``field`` counts as a failed guess."""
    if _checked.get() != (account_id, client):
        check(state, account_id, client)
    try:
        return lookup()
    except NotFound as exc:
        if exc.field == field:
            record_failure(state, account_id, client)
        raise


# The limiter's check handed to a lookup's unit: called on its transaction, or its read
# carried in the lookup's own statement.
Check = ratelimit.Guard


class Looked(Protocol):
    error: DomainError | None


L = TypeVar("L", bound=Looked)


def limited(
    state: AppState, account_id: str, client: str, lookup: Callable[[Check], L], field: str
) -> L:
    """The limiter around a lookup that runs in its own unit of work, consulted once:
    ``lookup(check)`` calls ``check(tx)`` on its own connection before it looks the code up
    (refused with 429 while over the limit), and a NotFound for ``field``, raised or carried
    as the result's ``error`` (a refusal stored under an Idempotency-Key), counts a failure."""
    try:
        result = lookup(_check_on(state, account_id, client))
    except NotFound as exc:
        if exc.field == field:
            record_failure(state, account_id, client)
        raise
    if is_unknown_code(result.error, field):
        record_failure(state, account_id, client)
    return result


async def limited_on_loop(
    state: AppState,
    account_id: str,
    client: str,
    lookup: Callable[[Check], Awaitable[L]],
    field: str,
) -> L:
    """:func:`limited` for a lookup the event loop awaits (SQLite's group commit); a failure
    is counted in a worker thread, since its write would block the loop."""
    try:
        result = await lookup(_check_on(state, account_id, client))
    except NotFound as exc:
        if exc.field == field:
            await in_thread(record_failure, state, account_id, client)
        raise
    if is_unknown_code(result.error, field):
        await in_thread(record_failure, state, account_id, client)
    return result


def _check_on(state: AppState, account_id: str, client: str) -> Check:
    return ratelimit.Guard(account_id, client, _limits(state))


def _limits(state: AppState) -> ratelimit.Limits:
    # Tests shrink the window through settings.extra; production uses the defaults.
    extra = state.settings.extra
    return ratelimit.Limits(
        per_account=int(
            extra.get("lookup_failures_per_account", ratelimit.MAX_FAILURES_PER_ACCOUNT)
        ),
        per_client=int(extra.get("lookup_failures_per_client", ratelimit.MAX_FAILURES_PER_CLIENT)),
    )
