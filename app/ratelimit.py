"""The short-code limiter around code lookups: a payer's scan and a payment by code.

A lookup is refused with 429 while the caller's account or address has too many recent
failures; a lookup that names no code counts one failure, in a transaction of its own so the
count survives the refusal it accompanies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from app.state import AppState
from models import ratelimit
from models.errors import DomainError, NotFound

T = TypeVar("T")


def check(state: AppState, account_id: str, client: str) -> None:
    with state.db.read() as session:
        ratelimit.check(session, account_id, client, _limits(state))


def record_failure(state: AppState, account_id: str, client: str) -> None:
    with state.db.write() as session:
        ratelimit.record(session, account_id, client, _limits(state))


def is_unknown_code(error: DomainError | None, field: str | None) -> bool:
    return isinstance(error, NotFound) and error.field == field


def guarded(
    state: AppState, account_id: str, client: str, lookup: Callable[[], T], field: str | None
) -> T:
    """Run lookup under the limiter; a NotFound for ``field`` counts as a failed guess."""
    check(state, account_id, client)
    try:
        return lookup()
    except NotFound as exc:
        if exc.field == field:
            record_failure(state, account_id, client)
        raise


def _limits(state: AppState) -> ratelimit.Limits:
    # Tests shrink the window through settings.extra; production uses the defaults.
    extra = state.settings.extra
    return ratelimit.Limits(
        per_account=int(
            extra.get("lookup_failures_per_account", ratelimit.MAX_FAILURES_PER_ACCOUNT)
        ),
        per_client=int(extra.get("lookup_failures_per_client", ratelimit.MAX_FAILURES_PER_CLIENT)),
    )
