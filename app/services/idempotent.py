"""Run a write unit of work under an ``Idempotency-Key`` (spec §2).

The key is looked up at the start of the operation's own transaction and recorded with its
response at the end of it, in one write, so the stored response and the effect commit together
or not at all. Of concurrent requests with the same key only one can commit (SQLite's write
lock orders them; on PostgreSQL the loser's insert of the key fails and rolls its whole
transaction back); the loser retries and reads the winner's response. Domain errors (4xx) are
stored too, in a transaction of their own, so a replay answers exactly what the first request
got; 5xx are never stored, so a retry after an outage runs afresh.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError

from app.errors import error_body, status_of
from app.http import in_writer, on_loop
from app.ratelimit import Check
from app.state import AppState
from models import idempotency
from models.errors import DomainError, RateLimited
from models.events import Published
from models.sql import Tx


@dataclass
class Result:
    status_code: int
    body: Any
    events: list[Published] = field(default_factory=list)
    error: DomainError | None = None


Operation = Callable[[Any], tuple[int, Any, list[Published]]]
R = TypeVar("R")
InServer = Callable[[Tx, idempotency.Claim | None, Check | None], tuple[int, Any, list[Published]]]


def run(
    state: AppState,
    account_id: str,
    scope: str,
    key: str | None,
    request_body: Any,
    operation: Operation,
) -> Result:
    """``operation`` gets a SQLModel session; run in a worker thread. (The hot paths' raw
    operations take :func:`run_in_group` on SQLite, :func:`run_in_server` on PostgreSQL.)"""
    if key is None:
        return _in_unit(state.db.write, operation)
    fingerprint = idempotency.request_fingerprint(request_body)
    for attempt in range(3):
        try:
            outcome = _attempt(state.db.write, account_id, scope, key, fingerprint, operation)
        except IntegrityError:
            # Lost the race for the key (or another unique key): the retry sees the winner's
            # stored response; a genuine conflict fails again and surfaces on the last try.
            if attempt == 2:
                raise
            continue
        if isinstance(outcome, Result):
            return outcome
        return _refused(state.db.raw_write, account_id, scope, key, fingerprint, outcome)
    raise AssertionError("unreachable")


async def _until_unique(attempt: Callable[[], Awaitable[R]]) -> R:
    """``attempt()`` again, up to three tries, while a unique value was taken meanwhile: the
    IntegrityError rolled its unit back whole. The key taken by a twin request (the retry
    sees its stored response), or a fresh short code (drawn again); a genuine conflict fails
    every time and surfaces on the last."""
    for tried in range(3):
        try:
            return await attempt()
        except IntegrityError:
            if tried == 2:
                raise
    raise AssertionError("unreachable")


def _in_unit(open_unit: Callable[[], AbstractContextManager[Any]], operation: Operation) -> Result:
    with open_unit() as work:
        status_code, body, events = operation(work)
        return Result(status_code, body, events)


async def run_in_group(
    state: AppState,
    account_id: str,
    scope: str,
    key: str | None,
    request_body: Any,
    operation: Operation,
    *,
    before: Check | None = None,
) -> Result:
    """A raw operation on SQLite, awaited on the event loop: the unit goes to the group
    writer from the loop and its future is settled there, with no worker thread between.
    ``before`` (the limiter's check) runs first in the unit, outside the key's bookkeeping:
    a 429 is never stored under the key."""
    group = state.db.group
    assert group is not None, "the group commit is SQLite's"
    work: Callable[[Tx], Result]
    if key is None:
        work = partial(_effect, operation, before=before)
    else:
        fingerprint = idempotency.request_fingerprint(request_body)
        work = partial(_grouped, account_id, scope, key, fingerprint, operation, before=before)
    return await _until_unique(lambda: in_writer(group, work))


def _effect(operation: Operation, tx: Tx, *, before: Check | None = None) -> Result:
    if before is not None:
        before(tx)
    status_code, body, events = operation(tx)
    return Result(status_code, body, events)


def _grouped(
    account_id: str,
    scope: str,
    key: str,
    fingerprint: str,
    operation: Operation,
    tx: Tx,
    *,
    before: Check | None = None,
) -> Result:
    """``_attempt`` as one unit of a group commit: the effect in a savepoint of its own, so
    a refusal rolls back only the effect and is recorded under the key in the same batch."""
    if before is not None:
        before(tx)
    stored = idempotency.begin(tx, account_id, scope, key, fingerprint)
    if stored is not None:
        return Result(stored.status_code, stored.body)
    tx.run("SAVEPOINT effect")
    try:
        status_code, body, events = operation(tx)
        idempotency.finish(tx, account_id, scope, key, fingerprint, status_code, body)
    except DomainError as exc:
        tx.run("ROLLBACK TO effect")
        tx.run("RELEASE effect")
        status_code = status_of(exc)
        if exc.code == "idempotency_key_reused" or status_code >= 500:
            raise
        refusal = error_body(exc.code, exc.message, exc.field)
        idempotency.finish(tx, account_id, scope, key, fingerprint, status_code, refusal)
        return Result(status_code, refusal, error=exc)
    tx.run("RELEASE effect")
    return Result(status_code, body, events)


async def run_in_server(
    state: AppState,
    account_id: str,
    scope: str,
    key: str | None,
    request_body: Any,
    operation: InServer,
    *,
    before: Check | None = None,
) -> Result:
    """A raw operation whose write, the key's record included, is one call that does
    everything inside the database (PostgreSQL), awaited on the event loop (``on_loop``).

    The operation gets the limiter's check to run first (or to carry in its first read), and
    the key's claim, which the database call honours: a stored response comes back from it.
    So the key is looked up here only when the operation is refused (``_refused``), where a
    stored response wins over the refusal of the re-run (a replay after the code was paid).
    Each statement is its own transaction on one connection."""
    claim = None
    if key is not None:
        claim = idempotency.Claim(
            account_id, scope, key, idempotency.request_fingerprint(request_body)
        )
    outcome = await _until_unique(
        lambda: on_loop(_run_in_server_once, state, claim, operation, before)
    )
    if isinstance(outcome, Result):
        return outcome
    assert claim is not None
    return await on_loop(
        _refused,
        state.db.transaction_on_loop,
        claim.account_id,
        claim.scope,
        claim.key,
        claim.fingerprint,
        outcome,
    )


def _run_in_server_once(
    state: AppState,
    claim: idempotency.Claim | None,
    operation: InServer,
    before: Check | None,
) -> Result | DomainError:
    """The result, or the refusal to record under the claimed key."""
    with state.db.autocommit_on_loop() as tx:
        try:
            status_code, body, events = operation(tx, claim, before)
            return Result(status_code, body, events)
        except RateLimited:
            # A limiter's 429 is never kept under the key.
            raise
        except DomainError as exc:
            if claim is None:
                raise
            return exc


def _attempt(
    open_unit: Callable[[], AbstractContextManager[Any]],
    account_id: str,
    scope: str,
    key: str,
    fingerprint: str,
    operation: Operation,
) -> Result | DomainError:
    """One try under the key: the stored response, the result, or the refusal to record."""
    try:
        with open_unit() as work:
            stored = idempotency.begin(work, account_id, scope, key, fingerprint)
            if stored is not None:
                return Result(stored.status_code, stored.body)
            status_code, body, events = operation(work)
            idempotency.finish(work, account_id, scope, key, fingerprint, status_code, body)
            return Result(status_code, body, events)
    except DomainError as exc:
        return exc


def _refused(
    open_unit: Callable[[], AbstractContextManager[Tx]],
    account_id: str,
    scope: str,
    key: str,
    fingerprint: str,
    exc: DomainError,
) -> Result:
    """The refusal recorded under the key in a transaction of its own (the effect's rolled
    back), or the response someone recorded first."""
    status_code = status_of(exc)
    if exc.code == "idempotency_key_reused" or status_code >= 500:
        # A 5xx did nothing and is never stored: the retry must run afresh.
        raise exc
    body = error_body(exc.code, exc.message, exc.field)
    with open_unit() as tx:
        stored = idempotency.begin(tx, account_id, scope, key, fingerprint)
        if stored is not None:
            return Result(stored.status_code, stored.body)
        idempotency.finish(tx, account_id, scope, key, fingerprint, status_code, body)
    return Result(status_code, body, error=exc)
