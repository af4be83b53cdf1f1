"""Payments (C2, C4, C5, C6) and refunds: one transaction each, balanced ledger legs, an event
per involved account, and the invariants the database itself enforces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Index,
    func,
    text,
)
from sqlmodel import Field, Session, SQLModel, select

from models import codes, idempotency, ledger, sql
from models.accounts import (
    Account,
    LockedAccount,
    Party,
    lock_accounts,
    lock_rows,
    lock_rows_query,
    locked_rows,
    party,
)
from models.agencies import ACTIVE as AGENCY_ACTIVE
from models.agencies import PENDING as AGENCY_PENDING
from models.agencies import REVOKED as AGENCY_REVOKED
from models.agencies import Agency
from models.clock import rfc3339, utcnow
from models.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from models.events import CODE_PAID, PAYMENT_REFUNDED, PAYMENT_SUCCEEDED, Published, append
from models.events import insert as insert_events
from models.events import stage as stage_event
from models.idempotency import Claim
from models.ids import new_id
from models.ledger import post
from models.money import parse_amount
from models.ratelimit import Guard
from models.receipts import Signer
from models.sql import Tx

SUCCEEDED = "succeeded"
PARTIALLY_REFUNDED = "partially_refunded"
REFUNDED = "refunded"
STATUSES = (SUCCEEDED, PARTIALLY_REFUNDED, REFUNDED)
ROLES = ("payer", "payee", "agent")
MAX_MEMO = 500


class Payment(SQLModel, table=True):
    __tablename__ = "payment"
    __table_args__ = (
        CheckConstraint("amount > 0", name="ck_payment_amount_positive"),
        CheckConstraint(
            "refunded_amount >= 0 AND refunded_amount <= amount", name="ck_payment_refunded_range"
        ),
        CheckConstraint(
            "status IN ('succeeded', 'partially_refunded', 'refunded')", name="ck_payment_status"
        ),
        CheckConstraint("payer_id <> payee_id", name="ck_payment_not_self"),
        # A dynamic code is paid at most once, whatever the application code does.
        Index(
            "uq_payment_dynamic_code",
            "code_id",
            unique=True,
            sqlite_where=text("code_kind = 'dynamic'"),
            postgresql_where=text("code_kind = 'dynamic'"),
        ),
        Index("ix_payment_payer", "payer_id", "id"),
        Index("ix_payment_payee", "payee_id", "id"),
        Index("ix_payment_agent", "agent_id", "id"),
        Index("ix_payment_code", "code_id", "id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    status: str = Field(default=SUCCEEDED, max_length=20)
    amount: int = Field(sa_type=BigInteger)
    refunded_amount: int = Field(default=0, sa_type=BigInteger)
    payer_id: str = Field(foreign_key="account.id", max_length=40)
    payee_id: str = Field(foreign_key="account.id", max_length=40)
    agent_id: str | None = Field(default=None, foreign_key="account.id", max_length=40)
    agency_id: str | None = Field(default=None, foreign_key="agency.id", max_length=40)
    code_id: str | None = Field(default=None, foreign_key="code.id", max_length=40)
    code_kind: str | None = Field(default=None, max_length=10)
    code_label: str | None = Field(default=None, max_length=100)
    items: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    memo: str | None = Field(default=None, max_length=MAX_MEMO)
    receipt: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Refund(SQLModel, table=True):
    __tablename__ = "refund"
    __table_args__ = (CheckConstraint("amount > 0", name="ck_refund_amount_positive"),)

    id: str = Field(primary_key=True, max_length=40)
    payment_id: str = Field(foreign_key="payment.id", index=True, max_length=40)
    amount: int = Field(sa_type=BigInteger)
    reason: str | None = Field(default=None, max_length=MAX_MEMO)
    created_by_id: str = Field(foreign_key="account.id", max_length=40)
    created_at: datetime = Field(default_factory=utcnow)


@dataclass(frozen=True)
class Context:
    """What a payment needs from the running deployment."""

    currency: str
    public_url: str
    signer: Signer
    # PostgreSQL's payments by static code skip their first read (``pay_in_server``).
    known_codes: codes.KnownCodes | None = None


# --- views ------------------------------------------------------------------------------------


Parties = Mapping[str, Account | Party | LockedAccount]


def payment_view(
    payment: Payment | SimpleNamespace, parties: Parties, currency: str
) -> dict[str, Any]:
    return {
        "id": payment.id,
        "status": payment.status,
        "amount": payment.amount,
        "refunded_amount": payment.refunded_amount,
        "currency": currency,
        "payer": party(parties[payment.payer_id]),
        "payee": party(parties[payment.payee_id]),
        "agent": party(parties[payment.agent_id]) if payment.agent_id else None,
        "code_id": payment.code_id,
        "code_kind": payment.code_kind,
        "code_label": payment.code_label,
        "items": list(payment.items),
        "memo": payment.memo,
        "created_at": rfc3339(payment.created_at),
        "receipt": dict(payment.receipt),
    }


def refund_view(refund: Refund) -> dict[str, Any]:
    return {
        "id": refund.id,
        "payment_id": refund.payment_id,
        "amount": refund.amount,
        "reason": refund.reason,
        "created_at": rfc3339(refund.created_at),
    }


def parties_of(session: Session, payments: list[Payment]) -> dict[str, Account]:
    """Every party of a page of payments in one query (no N+1)."""
    ids = {i for p in payments for i in (p.payer_id, p.payee_id, p.agent_id) if i}
    if not ids:
        return {}
    rows = session.exec(select(Account).where(Account.id.in_(sorted(ids)))).all()  # type: ignore[union-attr]
    return {row.id: row for row in rows}


def views(session: Session, payments: list[Payment], currency: str) -> list[dict[str, Any]]:
    parties = parties_of(session, payments)
    return [payment_view(p, parties, currency) for p in payments]


# --- paying -----------------------------------------------------------------------------------
#
# One payment, on either database: ``_plan`` reads and checks what the body asks for (nothing
# locked yet), ``_draft`` builds the payment, its receipt and its views, then ``pay`` (SQLite,
# and any caller that holds a transaction) writes them under its row locks, or
# ``pay_in_server`` (PostgreSQL) hands them to the ``paycode_pay`` function in one round trip.


def _optional_text(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_MEMO:
        raise Invalid(f"{field} must be a string of at most {MAX_MEMO} characters", field=field)
    return value.strip() or None


def _refuse_unusable(code: codes.CodeRow, agency_status: str | None) -> None:
    codes.refuse_unless_active(code)
    if agency_status == AGENCY_REVOKED:
        raise Conflict("the agency of this code was revoked", code="agency_revoked")
    if agency_status == AGENCY_PENDING:
        raise Conflict("the agency of this code is not active yet", code="agency_not_active")
    if agency_status is not None and agency_status != AGENCY_ACTIVE:
        raise Conflict("the agency of this code is not active", code="agency_not_active")


def _code_amount(code: codes.CodeRow, given: int | None) -> int:
    if code.amount is not None:
        if given is not None and given != code.amount:
            raise Invalid(
                "this code fixes the amount; the amount given differs",
                code="amount_mismatch",
                field="amount",
            )
        return code.amount
    if given is None:
        raise Invalid("this code needs the amount to pay", code="amount_required", field="amount")
    return given


# The code re-read under its row lock (PostgreSQL), so its status is decided once.
_LOCK_CODE = f"SELECT {codes.CODE_COLUMNS} FROM code WHERE code.id = ? FOR NO KEY UPDATE"
_USER_PARTY_BY_HANDLE = (
    "SELECT id, handle, display_name FROM account WHERE handle = ? AND kind = 'user'"
)


@dataclass
class _Plan:
    """A payment as the body asks for it, checked against what no lock protects: the payee,
    the amount, the memo, the code (if paid by code), and every party's name as a view shows
    it."""

    payee_id: str
    amount: int
    memo: str | None
    parties: dict[str, Party]
    code: codes.CodeRow | None = None
    agency_id: str | None = None
    # The code as it was found, for ``KnownCodes``.
    found: codes.Found | None = None

    @property
    def agent_id(self) -> str | None:
        return self.code.agent_id if self.code is not None else None


def _named_payee(tx: Tx, value: Any) -> Party:
    """The user a direct payment names by handle: 422 if not a handle, 404 if no such user."""
    handle = value.strip().lower() if isinstance(value, str) else None
    row = tx.one(_USER_PARTY_BY_HANDLE, (handle,)) if handle is not None else None
    if row is None:
        if not isinstance(value, str):
            raise Invalid("payee must be a handle", field="payee")
        raise NotFound("no account with that payee", field="payee")
    return Party(*row)


def _plan(
    tx: Tx,
    payer: Party,
    body: dict[str, Any],
    guard: Guard | None = None,
    found: codes.Found | None = None,
) -> _Plan:
    """Read and check what the body asks for, in the order of the answers: memo, one of code
    or payee, amount, the code and its agency (or the payee), then no paying oneself. One read
    for a payee, one per form tried for a code (its agency and both parties come with it).
    With the limiter's ``guard`` (a payment by code) its verdict comes first, read with the
    code. A code already ``found`` (``KnownCodes``) is not read again."""
    resolved = found is not None or guard is not None
    if found is None and guard is not None:
        found = codes.resolve_with_parties(tx, body.get("code"), guard)
    memo = _optional_text(body, "memo")
    has_code = body.get("code") is not None
    has_payee = body.get("payee") is not None
    if has_code == has_payee:
        raise Invalid("give exactly one of code or payee", field="code")
    given = parse_amount(body["amount"]) if body.get("amount") is not None else None
    if has_payee:
        payee = _named_payee(tx, body["payee"])
        if given is None:
            raise Invalid("amount is required", code="amount_required", field="amount")
        plan = _Plan(payee.id, given, memo, {payee.id: payee, payer.id: payer})
    else:
        if not isinstance(body["code"], str):
            raise Invalid("code must be a code token or short code", field="code")
        if not resolved:
            found = codes.resolve_with_parties(tx, body["code"])
        if found is None:
            raise NotFound("no such code", field="code")
        code, agency_status, payee, agent = found
        _refuse_unusable(code, agency_status)
        parties = {payee.id: payee, agent.id: agent, payer.id: payer}
        amount = _code_amount(code, given)
        plan = _Plan(code.payee_id, amount, memo, parties, code, code.agency_id, found)
    if plan.payee_id == payer.id:
        raise Invalid(
            "the payee cannot pay itself",
            code="self_payment",
            field="payee" if plan.code is None else "code",
        )
    return plan


def _receipt_facts(payment: SimpleNamespace, parties: Parties, currency: str) -> dict[str, Any]:
    return {
        "payment_id": payment.id,
        "amount": payment.amount,
        "currency": currency,
        "payer": parties[payment.payer_id].handle,
        "payee": parties[payment.payee_id].handle,
        "agent": parties[payment.agent_id].handle if payment.agent_id else None,
        "code_id": payment.code_id,
        "created_at": rfc3339(payment.created_at),
    }


@dataclass
class _Draft:
    """The payment's row (plain attributes: a SQLModel instance costs more to build than the
    INSERT), signed, with the views its events carry."""

    payment: SimpleNamespace
    view: dict[str, Any]
    code_body: dict[str, Any] | None


def _draft(plan: _Plan, payer_id: str, ctx: Context, now: datetime) -> _Draft:
    code = plan.code
    payment_id = new_id("pay")
    payment = SimpleNamespace(
        id=payment_id,
        status=SUCCEEDED,
        amount=plan.amount,
        refunded_amount=0,
        payer_id=payer_id,
        payee_id=plan.payee_id,
        agent_id=plan.agent_id,
        agency_id=plan.agency_id,
        code_id=code.id if code else None,
        code_kind=code.kind if code else None,
        code_label=code.label if code else None,
        items=list(code.items) if code else [],
        memo=plan.memo if plan.memo is not None or code is None else code.memo,
        receipt={},
        created_at=now,
    )
    payment.receipt = ctx.signer.sign(_receipt_facts(payment, plan.parties, ctx.currency))
    view = payment_view(payment, plan.parties, ctx.currency)
    code_body = None
    if code is not None and code.kind == codes.DYNAMIC:
        paid = replace(code, status=codes.PAID, paid_payment_id=payment_id)
        code_body = codes.code_view(
            paid, plan.parties, public_url=ctx.public_url, currency=ctx.currency, now=now
        )
    return _Draft(payment, view, code_body)


_PAYMENT_FIELDS = list(Payment.model_fields)
_JSON = {"items", "receipt"}
_CREATED_AT = _PAYMENT_FIELDS.index("created_at")
_INSERT = (
    f"INSERT INTO payment ({', '.join(_PAYMENT_FIELDS)})"
    f" VALUES ({', '.join('?' for _ in _PAYMENT_FIELDS)})"
)
# Relative, so the statement is right whatever the row held; the rows are locked besides.
_MOVE = "UPDATE account SET balance = balance + ?, last_seq = last_seq + ? WHERE id = ?"


def _save_accounts(tx: Tx, changes: dict[str, list[int]]) -> None:
    """Each account's balance change and event count, one UPDATE per row (executemany), in
    ascending id order like the locks."""
    tx.run_many(
        _MOVE,
        [(delta, count, account_id) for account_id, (delta, count) in sorted(changes.items())],
    )


def _insert_payment(tx: Tx, payment: SimpleNamespace) -> None:
    row = vars(payment)
    values = [tx.json(row[name]) if name in _JSON else row[name] for name in _PAYMENT_FIELDS]
    values[_CREATED_AT] = tx.moment(row["created_at"])
    tx.run(_INSERT, values)


def pay(
    work: Session | Tx, payer: Party, body: dict[str, Any], ctx: Context
) -> tuple[dict[str, Any], list[Published]]:
    """Move money from the caller to a payee, by code or directly, in the caller's transaction.

    Checks first (cheap reads), then locks the accounts in ascending id order, re-reads the
    code under its lock and decides its status once, then writes everything with one
    statement per table in hand-written SQL, so the locks are held for as short a time as can
    be."""
    tx = sql.tx(work)
    plan = _plan(tx, payer, body)
    code = plan.code
    agent_id = plan.agent_id
    involved = {payer.id, plan.payee_id} | ({agent_id} if agent_id else set())
    if code is not None and not tx.is_sqlite:
        # SQLite's write transaction began before the code was read (BEGIN IMMEDIATE), so
        # nothing can have changed it; elsewhere another transaction may have paid, cancelled
        # or revoked it while we waited. Accounts first, then the code: one round trip.
        account_rows, code_rows = tx.both(*lock_rows_query(tx, involved), _LOCK_CODE, (code.id,))
        locked = locked_rows(account_rows)
        plan.code = code = codes.read_row(tx, code_rows[0])
        _refuse_unusable(code, None)
    else:
        locked = lock_rows(tx, involved)
    payer_row, payee_row = locked[payer.id], locked[plan.payee_id]
    now = utcnow()
    draft = _draft(plan, payer.id, ctx, now)
    payment_id = draft.payment.id
    legs = ledger.entries(
        "payment", payment_id, [(payer_row, -plan.amount), (payee_row, plan.amount)], now
    )
    changes = {account_id: [0, 0] for account_id in involved}
    changes[payer.id][0] = -plan.amount
    changes[plan.payee_id][0] = plan.amount
    rows: list[dict[str, Any]] = []
    events: list[Published] = []

    def stage(account_id: str, type_: str, data: dict[str, Any]) -> None:
        event_row, published = stage_event(locked[account_id], type_, data, now)
        changes[account_id][1] += 1
        rows.append(event_row)
        events.append(published)

    for account_id in sorted(involved):
        stage(account_id, PAYMENT_SUCCEEDED, draft.view)
    if code is not None and draft.code_body is not None:
        codes.mark_paid(tx, code, payment_id)
        for account_id in sorted({code.agent_id, code.payee_id}):
            stage(account_id, CODE_PAID, draft.code_body)
    _insert_payment(tx, draft.payment)
    ledger.insert(tx, legs)
    _save_accounts(tx, changes)
    insert_events(tx, rows)
    for account in (payer_row, payee_row):
        account.balance += changes[account.id][0]
    return draft.view, events


# --- paying inside PostgreSQL -----------------------------------------------------------------

# Every parameter typed, so the one function is found without guessing.
_PAY = (
    "SELECT outcome, stored_status, stored_response, stored_hash, seqs, event_accounts"
    " FROM paycode_pay(?::text, ?::text, ?::text, ?::text, ?::text, ?::text, ?::text,"
    " ?::text, ?::json, ?::text, ?::json, ?::bigint, ?::timestamptz, ?::text[], ?::json,"
    " ?::json, ?::text, ?::text, ?::text, ?::timestamptz)"
)
# What the function found changed since the reads before it, as the same errors.
_REFUSALS: dict[str, tuple[str, str]] = {
    "insufficient_funds": ("insufficient_funds", "insufficient funds"),
    "code_already_paid": ("code_already_paid", "this code has been paid already"),
    "code_expired": ("code_expired", "this code has expired"),
    "code_cancelled": ("code_cancelled", "this code was cancelled"),
    "code_not_active": ("code_not_active", "this code is not active"),
    "agency_revoked": ("agency_revoked", "the agency of this code was revoked"),
    "agency_pending": ("agency_not_active", "the agency of this code is not active yet"),
    "agency_not_active": ("agency_not_active", "the agency of this code is not active"),
}


def pay_in_server(
    tx: Tx,
    payer: Party,
    body: dict[str, Any],
    ctx: Context,
    claim: Claim | None,
    guard: Guard | None = None,
) -> tuple[int, Any, list[Published]]:
    """``pay`` with its locked part in one round trip: the checks of what cannot change, the
    receipt and the views here, then the ``paycode_pay`` function (migration 0003) locks,
    re-checks what can change, and writes the payment, its legs, the balances, the code, the
    events and the key's record. ``tx`` is an autocommit connection: the function's
    statement commits in the process's group (``models.pg_group``), alone or with the
    payments waiting beside it. Returns the status, the body and the events; a key
    already recorded returns its stored response and no events. ``guard``: the limiter's
    check, judged first, its read carried by the code's.

    A static code in ``ctx.known_codes`` is not read first: the limiter's read, the check of
    the code's facts and the function are one statement (``_pay_known``), so the payment is
    one round trip. Should it refuse a code, the code is forgotten."""
    known_codes = ctx.known_codes
    if known_codes is not None and guard is not None:
        known = known_codes.get(body.get("code"))
        if known is not None:
            try:
                paid = _pay_by_known_code(tx, payer, body, ctx, claim, guard, known)
            except Conflict:
                known_codes.forget(body["code"])
                raise
            if paid is not None:
                return paid
            known_codes.forget(body["code"])
    plan = _plan(tx, payer, body, guard)
    if known_codes is not None and plan.found is not None:
        known_codes.remember(body["code"], plan.found)
    now = utcnow()
    draft = _draft(plan, payer.id, ctx, now)
    params = _pay_params(tx, payer, plan, draft, claim, now)
    row = tx.one_grouped(_PAY, params, **_locks(payer, plan, draft))
    return _paid(tx, payer, plan, draft, claim, row or (None,) * 6)


# What the cache holds about a code, as it stands now: the code with its payee, agent and
# agency, and both parties' names as the receipt and the views show them.
_STILL_SO = (
    "SELECT EXISTS (SELECT 1 FROM code"
    " JOIN account AS payee ON payee.id = code.payee_id"
    " JOIN account AS agent ON agent.id = code.agent_id"
    " WHERE code.id = ? AND code.payee_id = ? AND code.agent_id = ?"
    " AND code.agency_id IS NOT DISTINCT FROM ?"
    " AND payee.handle = ? AND payee.display_name = ?"
    " AND agent.handle = ? AND agent.display_name = ?) AS still"
)


@lru_cache(maxsize=4)
def _pay_known(limiting: str) -> str:
    """The limiter's read, the check of what the cache holds, and ``paycode_pay``, which runs
    only if the first two allow it (a one-time filter on their results)."""
    return (
        f"SELECT limiting.*, held.still, paid.* FROM ({limiting})"
        " AS limiting(by_account, by_client)"
        f" CROSS JOIN LATERAL ({_STILL_SO}) AS held"
        f" LEFT JOIN LATERAL ({_PAY} WHERE limiting.by_account IS NULL"
        " AND limiting.by_client IS NULL AND held.still) AS paid ON true"
    )


def _pay_by_known_code(
    tx: Tx,
    payer: Party,
    body: dict[str, Any],
    ctx: Context,
    claim: Claim | None,
    guard: Guard,
    known: codes.Found,
) -> tuple[int, Any, list[Published]] | None:
    """The payment by a code from ``KnownCodes`` in one round trip, or None when the
    ordinary path must answer: the body fails a check (it answers in its own order, the
    limiter's first) or the code is no longer as the cache holds it."""
    try:
        plan = _plan(tx, payer, body, found=known)
    except DomainError:
        return None
    code, _, payee, agent = known
    now = utcnow()
    draft = _draft(plan, payer.id, ctx, now)
    limiting, limit_params = guard.read(tx, now)
    held = (code.id, code.payee_id, code.agent_id, code.agency_id)
    held += (payee.handle, payee.display_name, agent.handle, agent.display_name)
    pay_params = _pay_params(tx, payer, plan, draft, claim, now)
    params = (*limit_params, *held, *pay_params)
    row = tx.one_grouped(_pay_known(limiting), params, **_locks(payer, plan, draft))
    assert row is not None
    guard.judge(tx, row[:2], now)
    if not row[2]:
        return None
    return _paid(tx, payer, plan, draft, claim, row[3:])


def _locks(payer: Party, plan: _Plan, draft: _Draft) -> dict[str, tuple[str | None, ...]]:
    """The rows ``paycode_pay`` locks, for its batch to lock first (``models.pg_group``)."""
    return {
        "accounts": (payer.id, plan.payee_id, plan.agent_id),
        "codes": (draft.payment.code_id,),
    }


def _pay_params(
    tx: Tx, payer: Party, plan: _Plan, draft: _Draft, claim: Claim | None, now: datetime
) -> tuple[Any, ...]:
    payment = draft.payment
    return (
        payment.id,
        payer.id,
        plan.payee_id,
        plan.agent_id,
        plan.agency_id,
        payment.code_id,
        payment.code_kind,
        payment.code_label,
        tx.json(payment.items),
        payment.memo,
        tx.json(payment.receipt),
        plan.amount,
        now,
        [new_id("led"), new_id("led")],
        tx.json(draft.view),
        tx.json(draft.code_body) if draft.code_body is not None else None,
        claim.key if claim else None,
        claim.scope if claim else None,
        claim.fingerprint if claim else None,
        claim.stale_before if claim else None,
    )


def _paid(
    tx: Tx,
    payer: Party,
    plan: _Plan,
    draft: _Draft,
    claim: Claim | None,
    row: Sequence[Any],
) -> tuple[int, Any, list[Published]]:
    """What ``paycode_pay`` answered, as the response and the events (or the refusal)."""
    outcome, stored_status, stored_body, stored_hash, seqs, accounts = row
    if outcome == "stored":
        assert claim is not None
        stored = idempotency.replay(
            stored_hash, stored_status, tx.read_json(stored_body), claim.fingerprint
        )
        return stored.status_code, stored.body, []
    if outcome != "ok":
        code_, message = _REFUSALS[outcome]
        if code_ == ledger.InsufficientFunds.code:
            raise ledger.InsufficientFunds(message)
        raise Conflict(message, code=code_)
    view, code_body = draft.view, draft.code_body
    paying = len({payer.id, plan.payee_id, plan.agent_id} - {None})
    created_at = rfc3339(draft.payment.created_at)
    events = [
        Published(
            account_id,
            seq,
            {
                "type": PAYMENT_SUCCEEDED if at < paying else CODE_PAID,
                "created_at": created_at,
                "data": view if at < paying else code_body,
            },
        )
        for at, (account_id, seq) in enumerate(zip(accounts, seqs, strict=True))
    ]
    return 201, view, events


# --- reading ----------------------------------------------------------------------------------


def get_visible(session: Session, caller_id: str, payment_id: str) -> Payment:
    """A payment its payer, payee or agent asks for; anyone else is told it does not exist."""
    payment = session.get(Payment, payment_id) if len(payment_id) <= 40 else None
    if payment is None or caller_id not in (payment.payer_id, payment.payee_id, payment.agent_id):
        raise NotFound("no such payment")
    return payment


@dataclass(frozen=True)
class Filters:
    role: str | None = None
    agent: str | None = None
    code_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _filtered(session: Session, caller_id: str, filters: Filters) -> Any:
    """The query of the payments the caller may see, narrowed by the filters; None if the
    filters name an agent that does not exist (so nothing can match)."""
    query = select(Payment)
    if filters.role == "payer":
        query = query.where(Payment.payer_id == caller_id)
    elif filters.role == "payee":
        query = query.where(Payment.payee_id == caller_id)
    elif filters.role == "agent":
        query = query.where(Payment.agent_id == caller_id)
    else:
        query = query.where(
            (Payment.payer_id == caller_id)
            | (Payment.payee_id == caller_id)
            | (Payment.agent_id == caller_id)
        )
    if filters.agent is not None:
        agent = session.exec(
            select(Account.id).where(Account.handle == filters.agent.strip().lower())
        ).first()
        if agent is None:
            return None
        query = query.where(Payment.agent_id == agent)
    if filters.code_id is not None:
        query = query.where(Payment.code_id == filters.code_id)
    if filters.since is not None:
        query = query.where(Payment.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(Payment.created_at < filters.until)
    return query


def list_visible(
    session: Session, caller_id: str, filters: Filters, limit: int, cursor: str | None
) -> list[Payment]:
    """Newest first; up to limit+1 rows so the caller can tell there is a next page."""
    query = _filtered(session, caller_id, filters)
    if query is None:
        return []
    if cursor is not None:
        query = query.where(Payment.id < cursor)
    return list(session.exec(query.order_by(Payment.id.desc()).limit(limit + 1)).all())  # type: ignore[attr-defined]


def report_by_agent(
    session: Session,
    payee_id: str,
    since: datetime | None,
    until: datetime | None,
) -> list[dict[str, Any]]:
    """The payee's books per agent and code (C5): count, gross, refunded, net; direct
    payments, which went through no agent, are not in it."""
    query = (
        select(
            Payment.agent_id,
            Payment.code_id,
            func.count(),
            func.sum(Payment.amount),
            func.sum(Payment.refunded_amount),
        )
        .where(Payment.payee_id == payee_id, Payment.agent_id.is_not(None))  # type: ignore[union-attr]
        .group_by(Payment.agent_id, Payment.code_id)
    )
    if since is not None:
        query = query.where(Payment.created_at >= since)
    if until is not None:
        query = query.where(Payment.created_at < until)
    groups = list(session.exec(query).all())
    agent_ids = sorted({g[0] for g in groups})
    code_ids = sorted({g[1] for g in groups if g[1]})
    agents = (
        {a.id: a for a in session.exec(select(Account).where(Account.id.in_(agent_ids))).all()}  # type: ignore[union-attr]
        if agent_ids
        else {}
    )
    labels = (
        dict(
            session.exec(
                select(codes.Code.id, codes.Code.label).where(codes.Code.id.in_(code_ids))
            ).all()
        )  # type: ignore[union-attr]
        if code_ids
        else {}
    )
    rows = []
    for agent_id, code_id, count, gross, refunded in groups:
        rows.append(
            {
                "agent": party(agents[agent_id]),
                "code_id": code_id,
                "label": labels.get(code_id),
                "count": int(count),
                "gross": int(gross),
                "refunded": int(refunded),
                "net": int(gross) - int(refunded),
            }
        )
    rows.sort(key=lambda r: (r["agent"]["handle"], r["label"] or "", r["code_id"] or ""))
    return rows


# --- refunds ----------------------------------------------------------------------------------


def _may_refund(session: Session, caller_id: str, payment: Payment) -> bool:
    if caller_id == payment.payee_id:
        return True
    if caller_id != payment.agent_id or payment.agency_id is None:
        return False
    agency = session.get(Agency, payment.agency_id)
    return agency is not None and agency.status == AGENCY_ACTIVE and agency.can_refund


def refund(
    session: Session, caller_id: str, payment_id: str, body: dict[str, Any], currency: str
) -> tuple[dict[str, Any], list[Published]]:
    """Give money back to the payer, in full or in part; the payee's balance pays for it."""
    payment = get_visible(session, caller_id, payment_id)
    if not _may_refund(session, caller_id, payment):
        raise Forbidden("only the payee, or an agent allowed to refund, can refund this payment")
    given = parse_amount(body["amount"]) if body.get("amount") is not None else None
    reason = _optional_text(body, "reason")
    parties = {payment.payer_id, payment.payee_id} | (
        {payment.agent_id} if payment.agent_id else set()
    )
    locked = lock_accounts(session, parties)
    # Every refund of this payment locks its payee first, so this re-read is the latest.
    payment = session.exec(
        select(Payment).where(Payment.id == payment.id).execution_options(populate_existing=True)
    ).one()
    remaining = payment.amount - payment.refunded_amount
    amount = remaining if given is None else given
    if amount > remaining or amount <= 0:
        raise Conflict(
            f"refunds would exceed the payment; {remaining} can still be refunded",
            code="refund_exceeds_payment",
            field="amount",
        )
    record = Refund(
        id=new_id("ref"),
        payment_id=payment.id,
        amount=amount,
        reason=reason,
        created_by_id=caller_id,
    )
    post(
        session,
        "refund",
        record.id,
        [(locked[payment.payee_id], -amount), (locked[payment.payer_id], amount)],
    )
    payment.refunded_amount += amount
    payment.status = REFUNDED if payment.refunded_amount == payment.amount else PARTIALLY_REFUNDED
    session.add(payment)
    session.add(record)
    view = payment_view(payment, locked, currency)
    events = [append(session, locked[i], PAYMENT_REFUNDED, view) for i in sorted(parties)]
    return refund_view(record), events


def refund_sums(session: Session) -> dict[str, int]:
    """Per payment, what its refund rows add up to (for the books check)."""
    rows = session.exec(
        select(Refund.payment_id, func.sum(Refund.amount)).group_by(Refund.payment_id)
    )
    return {payment_id: int(total) for payment_id, total in rows.all()}


def find(session: Session, payment_id: Any) -> Payment | None:
    if not isinstance(payment_id, str) or len(payment_id) > 40:
        return None
    return session.get(Payment, payment_id)
