"""Payments (spec §7), refunds, the payee's books and signed receipts: each call is one unit
of work; money-moving ones go through the Idempotency-Key runner."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

from sqlmodel import Session

from app import ratelimit
from app.http import in_thread
from app.services import idempotent
from app.settings import Settings
from app.state import AppState
from models import payments, receipts
from models.accounts import Party
from models.events import Published
from models.idempotency import Claim
from models.sql import Tx

# A rotation made by another process reaches this one within this many seconds; until then
# it keeps signing with the previous key, whose receipts stay valid.
SIGNER_TTL = 60.0
_signers: dict[tuple[str, str | None], tuple[float, receipts.Signer]] = {}
_signers_lock = threading.Lock()


def prepare(state: AppState) -> receipts.Signer:
    """Make sure a signing key exists (generated at first start) and load it."""
    with state.db.write() as session:
        signer = receipts.current_signer(session, state.settings.receipt_key)
    with _signers_lock:
        _signers[_signer_key(state)] = (time.monotonic(), signer)
    return signer


def _signer_key(state: AppState) -> tuple[str, str | None]:
    return (state.db.url, state.settings.receipt_key)


def _cached_signer(state: AppState) -> receipts.Signer | None:
    cached = _signers.get(_signer_key(state))
    if cached is not None and time.monotonic() - cached[0] < SIGNER_TTL:
        return cached[1]
    return None


def _signer(state: AppState) -> receipts.Signer:
    """The cached signer; past its TTL it is read again in a transaction of its own, before the
    payment's (on SQLite, inside the group commit's batch it would wait for the write lock
    that batch holds)."""
    cached = _cached_signer(state)
    if cached is not None:
        return cached
    key = _signer_key(state)
    with state.db.write() as session:
        signer = receipts.current_signer(session, state.settings.receipt_key)
    with _signers_lock:
        _signers[key] = (time.monotonic(), signer)
    return signer


def _context(state: AppState, signer: receipts.Signer) -> payments.Context:
    return payments.Context(
        currency=state.settings.currency,
        public_url=state.settings.public_url,
        signer=signer,
        known_codes=state.known_codes,
    )


async def pay(
    state: AppState, payer: Party, key: str | None, body: dict[str, Any], client: str
) -> idempotent.Result:
    """A payment under its ``Idempotency-Key``, limited like /scan when it names a code,
    awaited on the event loop with no worker thread between.

    SQLite: into the group commit; the limiter's check, the key's lookup, the money movement
    and the key's record are one unit of the writer's batch. PostgreSQL: the same reads and
    the function call that does the locked part in the server, on the loop's own pool. Only
    the rare steps (a signer past its TTL, counting an unknown code, recording a refusal)
    take a worker thread."""
    signer = _cached_signer(state) or await in_thread(_signer, state)
    ctx = _context(state, signer)
    run: Callable[[ratelimit.Check | None], Awaitable[idempotent.Result]]
    if state.db.is_sqlite:

        def operation(tx: Tx) -> tuple[int, Any, list[Published]]:
            view, events = payments.pay(tx, payer, body, ctx)
            return 201, view, events

        def run(check: ratelimit.Check | None) -> Awaitable[idempotent.Result]:
            return idempotent.run_in_group(
                state, payer.id, "payments", key, body, operation, before=check
            )

    else:

        def in_server(
            tx: Tx, claim: Claim | None, guard: ratelimit.Check | None
        ) -> tuple[int, Any, list[Published]]:
            return payments.pay_in_server(tx, payer, body, ctx, claim, guard)

        def run(check: ratelimit.Check | None) -> Awaitable[idempotent.Result]:
            return idempotent.run_in_server(
                state, payer.id, "payments", key, body, in_server, before=check
            )

    if body.get("code") is None:
        return await run(None)
    # Paying by code is a lookup too: guesses through it are limited like /scan.
    return await ratelimit.limited_on_loop(state, payer.id, client, run, "code")


def refund(
    state: AppState, caller_id: str, payment_id: str, key: str | None, body: dict[str, Any]
) -> idempotent.Result:
    def operation(session: Session) -> tuple[int, Any, list[Published]]:
        view, events = payments.refund(
            session, caller_id, payment_id, body, state.settings.currency
        )
        return 201, view, events

    # The payment is part of the scope, so one key may refund two payments independently.
    scope = f"refund:{payment_id[:50]}"
    return idempotent.run(state, caller_id, scope, key, body, operation)


def get(state: AppState, caller_id: str, payment_id: str) -> dict[str, Any]:
    with state.db.read() as session:
        payment = payments.get_visible(session, caller_id, payment_id)
        return payments.views(session, [payment], state.settings.currency)[0]


def list_visible(
    state: AppState,
    caller_id: str,
    filters: payments.Filters,
    limit: int,
    cursor: str | None,
) -> list[dict[str, Any]]:
    with state.db.read() as session:
        rows = payments.list_visible(session, caller_id, filters, limit, cursor)
        return payments.views(session, rows, state.settings.currency)


CSV_PAGE = 500


def csv_pages(
    state: AppState, caller_id: str, filters: payments.Filters
) -> Iterator[list[dict[str, Any]]]:
    """Every matching payment, newest first, a page at a time, all from one snapshot on one
    held connection: the books as of one moment, and once the first page is read nothing
    more waits for the pool, so an export under load is refused before its first byte or
    completes. The first page is yielded even when empty."""
    with state.db.snapshot() as session:
        cursor: str | None = None
        while True:
            rows = payments.list_visible(session, caller_id, filters, CSV_PAGE, cursor)
            views = payments.views(session, rows[:CSV_PAGE], state.settings.currency)
            yield views
            if len(rows) <= CSV_PAGE:
                return
            cursor = views[-1]["id"]


def report(
    state: AppState, caller_id: str, since: datetime | None, until: datetime | None
) -> list[dict[str, Any]]:
    with state.db.read() as session:
        return payments.report_by_agent(session, caller_id, since, until)


def receipt_keys(state: AppState) -> list[dict[str, Any]]:
    with state.db.read() as session:
        return [receipts.key_view(row) for row in receipts.list_keys(session)]


def verify_receipt(state: AppState, receipt: Any) -> dict[str, Any]:
    """Valid only if a known key signed it AND it is the receipt of a payment of this
    platform: a signed receipt is shown to whoever holds it, so its payment is too."""
    with state.db.read() as session:
        facts = receipts.verified_facts(session, receipt)
        payment = payments.find(session, facts.get("payment_id")) if facts else None
        if payment is None or payment.receipt.get("payload") != receipt.get("payload"):
            return {"valid": False, "payment": None}
        return {
            "valid": True,
            "payment": payments.views(session, [payment], state.settings.currency)[0],
        }


def rotate_receipt_key_now(settings: Settings) -> dict[str, Any]:
    """The CLI's rotation: a new signing key; every server picks it up within SIGNER_TTL."""
    from models.db import Database

    db = Database(settings.database_url, pool_size=1)
    try:
        with db.write() as session:
            view = receipts.key_view(receipts.rotate(session))
    finally:
        db.dispose()
    # An app in this same process signs with the new key from its next payment on.
    with _signers_lock:
        for cached in [k for k in _signers if k[0] == db.url]:
            del _signers[cached]
    return view
