"""Collection codes (C3, C7, C8, C10): issuance for an active agency, static and dynamic, their
tokens and typed short codes, expiry, cancellation, and the views a party and a payer see."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Index,
    String,
    or_,
    update,
)
from sqlmodel import Field, Session, SQLModel, select

from models import shortcodes, sql
from models.accounts import Account, LockedAccount, Party, party
from models.clock import rfc3339, utcnow
from models.errors import Conflict, NotFound
from models.events import Published
from models.ratelimit import Guard
from models.sql import Tx

STATIC = "static"
DYNAMIC = "dynamic"
KINDS = (STATIC, DYNAMIC)
ACTIVE = "active"
PAID = "paid"
EXPIRED = "expired"
CANCELLED = "cancelled"
REVOKED = "revoked"
STATUSES = (ACTIVE, PAID, EXPIRED, CANCELLED, REVOKED)


class Code(SQLModel, table=True):
    __tablename__ = "code"
    __table_args__ = (
        CheckConstraint("amount IS NULL OR amount > 0", name="ck_code_amount_positive"),
        CheckConstraint("kind IN ('static', 'dynamic')", name="ck_code_kind"),
        CheckConstraint(
            "status IN ('active', 'paid', 'cancelled', 'revoked')", name="ck_code_status"
        ),
        # A dynamic code fixes its amount (C8); only a dynamic code is ever used up.
        CheckConstraint("kind = 'static' OR amount IS NOT NULL", name="ck_code_dynamic_amount"),
        CheckConstraint(
            "status != 'paid' OR (kind = 'dynamic' AND paid_payment_id IS NOT NULL)",
            name="ck_code_paid_dynamic",
        ),
        # The lists are "my codes as agent/payee, newest first": served by these two.
        Index("ix_code_agent_id_id", "agent_id", "id"),
        Index("ix_code_payee_id_id", "payee_id", "id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    agency_id: str = Field(foreign_key="agency.id", index=True, max_length=40)
    payee_id: str = Field(foreign_key="account.id", max_length=40)
    agent_id: str = Field(foreign_key="account.id", max_length=40)
    created_by_id: str = Field(foreign_key="account.id", max_length=40)
    kind: str = Field(max_length=10)
    status: str = Field(default=ACTIVE, max_length=12)
    label: str | None = Field(default=None, max_length=100)
    amount: int | None = Field(default=None, sa_type=BigInteger)
    items: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    memo: str | None = Field(default=None, max_length=500)
    token: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    short_code: str = Field(sa_column=Column(String(10), unique=True, nullable=False))
    expires_at: datetime | None = Field(default=None)
    created_at: datetime = Field(default_factory=utcnow)
    paid_payment_id: str | None = Field(default=None, max_length=40)


@dataclass(slots=True)
class CodeRow:
    """A code row as plain data, for the hot paths (issue, scan, pay): building an ORM
    ``Code`` costs more than reading the row."""

    id: str
    agency_id: str
    payee_id: str
    agent_id: str
    created_by_id: str
    kind: str
    status: str
    label: str | None
    amount: int | None
    items: list[dict[str, Any]]
    memo: str | None
    token: str
    short_code: str
    expires_at: datetime | None
    created_at: datetime
    paid_payment_id: str | None


AnyCode = Code | CodeRow
Parties = Mapping[str, Account | Party | LockedAccount]


# --- state ------------------------------------------------------------------------------------


def revoke_unpaid_of_agency(session: Session, agency_id: str) -> None:
    """A revoked agency's unpaid codes stop accepting payments at once."""
    session.exec(
        update(Code)  # type: ignore[arg-type]
        .where(Code.agency_id == agency_id, Code.status == ACTIVE)  # type: ignore[arg-type]
        .values(status=REVOKED)
    )


def effective_status(code: AnyCode, now: datetime | None = None) -> str:
    """Stored status, except that an active code past its expiry reads as expired."""
    if code.status == ACTIVE and code.expires_at is not None:
        expires_at = code.expires_at
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= (now or utcnow()):
            return EXPIRED
    return code.status


def resolve(session: Session, typed: str) -> CodeRow | None:
    """The code a payer names: its URL token, or its short code as a person would type it."""
    found = resolve_with_agency(session, typed)
    return found[0] if found is not None else None


def resolve_with_agency(work: Session | Tx, typed: str) -> tuple[CodeRow, str] | None:
    """``resolve`` with its agency's status, in one read per form tried (the payment's hot
    path). The code comes back as plain data, not an ORM object."""
    if not isinstance(typed, str) or not typed or len(typed) > 200:
        return None
    tx = sql.tx(work)
    row = tx.one(_BY_TOKEN, (typed,))
    if row is None:
        canonical = shortcodes.normalize(typed)
        if canonical is None:
            return None
        row = tx.one(_BY_SHORT_CODE, (canonical,))
        if row is None:
            return None
    return read_row(tx, row), row[_CODE_COLUMNS]


# A code as a payment needs it: the code, its agency's status, its payee and its agent.
Found = tuple[CodeRow, str, Party, Party]


def resolve_with_parties(tx: Tx, typed: str, guard: Guard | None = None) -> Found | None:
    """``resolve_with_agency`` with the code's payee and agent as a view names them, in one
    read per form tried: what a payment signs and shows, read before any lock is taken.

    With the limiter's ``guard``, its read rides in the first form's statement and is judged
    before anything found is looked at: a limited caller learns nothing, for no round trip
    of its own."""
    if not isinstance(typed, str) or not typed or len(typed) > 200:
        if guard is not None:
            guard(tx)
        return None
    if guard is None:
        row = tx.one(_PARTIES_BY_TOKEN, (typed,))
    else:
        now = utcnow()
        limiting, params = guard.read(tx, now)
        joined = tx.one(_guarded_by(limiting), (*params, typed))
        assert joined is not None
        guard.judge(tx, joined[:2], now)
        row = joined[2:] if joined[2] is not None else None
    if row is None:
        canonical = shortcodes.normalize(typed)
        if canonical is None:
            return None
        row = tx.one(_PARTIES_BY_SHORT_CODE, (canonical,))
        if row is None:
            return None
    code = read_row(tx, row)
    agency_status, payee_handle, payee_name, agent_handle, agent_name = row[_CODE_COLUMNS:]
    return (
        code,
        agency_status,
        Party(code.payee_id, payee_handle, payee_name),
        Party(code.agent_id, agent_handle, agent_name),
    )


class KnownCodes:
    """Static codes this process has paid by, keyed by what the payer typed (token or short
    code). A code's token, short code, kind, amount, items, parties and agency never change
    and a code is never deleted, so a payment by one of these needs no read before its locked
    part (``payments.pay_in_server``); what can change (the code's status and expiry, its
    agency's status) is checked under the locks as for any payment, and the facts held here
    are checked there too. Used from the event loop only."""

    # Static codes are few (one per counter); past this many the oldest make room.
    LIMIT = 10_000

    def __init__(self) -> None:
        self._found: dict[str, Found] = {}

    def get(self, typed: Any) -> Found | None:
        return self._found.get(typed) if isinstance(typed, str) else None

    def remember(self, typed: str, found: Found) -> None:
        if found[0].kind != STATIC:
            return
        if len(self._found) >= self.LIMIT and typed not in self._found:
            del self._found[next(iter(self._found))]
        self._found[typed] = found

    def forget(self, typed: str) -> None:
        self._found.pop(typed, None)


def read_row(tx: Tx, row: Sequence[Any]) -> CodeRow:
    """The code of a row that selects ``CODE_COLUMNS`` first."""
    values = list(row[:_CODE_COLUMNS])
    for at in JSON_AT:
        values[at] = tx.read_json(values[at])
    for at in MOMENT_AT:
        values[at] = tx.read_moment(values[at])
    return CodeRow(*values)


def lock(session: Session, code_id: str) -> Code:
    """Re-read the code under a row lock (PostgreSQL) so its status is decided once."""
    query = select(Code).where(Code.id == code_id)
    if session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update(key_share=True)
    return session.exec(query.execution_options(populate_existing=True)).one()


_MARK_PAID = "UPDATE code SET status = 'paid', paid_payment_id = ? WHERE id = ?"


def mark_paid(work: Session | Tx, code: AnyCode, payment_id: str) -> None:
    """One UPDATE; the in-memory code reads as paid for the views built after."""
    sql.tx(work).run(_MARK_PAID, (payment_id, code.id))
    code.status = PAID
    code.paid_payment_id = payment_id


def refuse_unless_active(code: AnyCode, now: datetime | None = None) -> None:
    """The 409 that says why a code cannot be used (or cancelled) any more."""
    status = effective_status(code, now)
    if status == PAID:
        raise Conflict("this code has been paid already", code="code_already_paid")
    if status == EXPIRED:
        raise Conflict("this code has expired", code="code_expired")
    if status == CANCELLED:
        raise Conflict("this code was cancelled", code="code_cancelled")
    if status == REVOKED:
        raise Conflict("the agency of this code was revoked", code="agency_revoked")
    if status != ACTIVE:
        raise Conflict("this code is not active", code="code_not_active")


# --- views ------------------------------------------------------------------------------------


def url_of(code: AnyCode, public_url: str) -> str:
    """The QR content: the payer page a phone camera opens."""
    return f"{public_url.rstrip('/')}/c/{code.token}"


def code_view(
    code: AnyCode,
    parties: Parties,
    *,
    public_url: str,
    currency: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The Code object of spec §6, for the agent and the payee."""
    return {
        "id": code.id,
        "kind": code.kind,
        "status": effective_status(code, now),
        "agency_id": code.agency_id,
        "agent": party(parties[code.agent_id]),
        "payee": party(parties[code.payee_id]),
        "label": code.label,
        "amount": code.amount,
        "currency": currency,
        "items": list(code.items),
        "memo": code.memo,
        "token": code.token,
        "short_code": shortcodes.display(code.short_code),
        "url": url_of(code, public_url),
        "expires_at": rfc3339(code.expires_at),
        "created_at": rfc3339(code.created_at),
        "paid_payment_id": code.paid_payment_id,
    }


def scan_view(
    code: AnyCode, parties: Parties, *, currency: str, now: datetime | None = None
) -> dict[str, Any]:
    """What a payer sees before paying (C8): who is paid, through whom, for what."""
    return {
        "kind": code.kind,
        "status": effective_status(code, now),
        "payee": party(parties[code.payee_id]),
        "agent": party(parties[code.agent_id]),
        "label": code.label,
        "amount": code.amount,
        "currency": currency,
        "items": list(code.items),
        "memo": code.memo,
        "expires_at": rfc3339(code.expires_at),
    }


def parties_of(session: Session, codes: list[AnyCode]) -> dict[str, Account]:
    ids = sorted({i for code in codes for i in (code.payee_id, code.agent_id)})
    if not ids:
        return {}
    rows = session.exec(select(Account).where(Account.id.in_(ids))).all()  # type: ignore[union-attr]
    return {row.id: row for row in rows}


def view(session: Session, code: Code, *, public_url: str, currency: str) -> dict[str, Any]:
    return code_view(code, parties_of(session, [code]), public_url=public_url, currency=currency)


# --- the statements -------------------------------------------------------------------------

# The code table's columns in model order: a CodeRow is built from them by position.
FIELDS = list(Code.model_fields)
CODE_COLUMNS = ", ".join(f"code.{name}" for name in FIELDS)
_CODE_COLUMNS = len(FIELDS)
# Stored as text on SQLite: converted on the way in and out.
JSON_AT = (FIELDS.index("items"),)
MOMENT_AT = (FIELDS.index("expires_at"), FIELDS.index("created_at"))
_WITH_AGENCY = (
    f"SELECT {CODE_COLUMNS}, agency.status FROM code JOIN agency ON agency.id = code.agency_id"
)
_BY_TOKEN = _WITH_AGENCY + " WHERE code.token = ?"
_BY_SHORT_CODE = _WITH_AGENCY + " WHERE code.short_code = ?"
_WITH_PARTIES = (
    f"SELECT {CODE_COLUMNS}, agency.status, payee.handle, payee.display_name, agent.handle,"
    " agent.display_name FROM code JOIN agency ON agency.id = code.agency_id"
    " JOIN account AS payee ON payee.id = code.payee_id"
    " JOIN account AS agent ON agent.id = code.agent_id"
)
_PARTIES_BY_TOKEN = _WITH_PARTIES + " WHERE code.token = ?"
_PARTIES_BY_SHORT_CODE = _WITH_PARTIES + " WHERE code.short_code = ?"


@lru_cache(maxsize=4)
def _guarded_by(limiting: str) -> str:
    # The limiter's one-row read, then the code's columns or NULLs when no code matches.
    return (
        f"SELECT * FROM ({limiting}) AS limiting LEFT JOIN ({_PARTIES_BY_TOKEN}) AS found ON true"
    )


# --- the parties' operations ------------------------------------------------------------------


def get_visible(session: Session, caller_id: str, code_id: str) -> Code:
    """The code if the caller is its agent or payee; anyone else learns nothing (404)."""
    code = session.get(Code, code_id) if len(code_id) <= 40 else None
    if code is None or caller_id not in (code.payee_id, code.agent_id):
        raise NotFound("no such code")
    return code


def cancel(
    session: Session, caller_id: str, code_id: str, *, public_url: str, currency: str
) -> tuple[dict[str, Any], list[Published]]:
    """The agent or the payee withdraws a code that can still be paid."""
    get_visible(session, caller_id, code_id)
    code = lock(session, code_id)
    refuse_unless_active(code)
    code.status = CANCELLED
    session.add(code)
    session.flush()
    return view(session, code, public_url=public_url, currency=currency), []


def list_for(
    session: Session,
    caller_id: str,
    role: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
    *,
    public_url: str,
    currency: str,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Up to limit+1 codes of the caller, newest first; status is the status a client sees."""
    now = now or utcnow()
    query = select(Code)
    if role == "agent":
        query = query.where(Code.agent_id == caller_id)
    elif role == "payee":
        query = query.where(Code.payee_id == caller_id)
    else:
        query = query.where(or_(Code.agent_id == caller_id, Code.payee_id == caller_id))
    # Expiry is computed, not stored: an expired code is an active one past its time.
    if status == EXPIRED:
        query = query.where(
            Code.status == ACTIVE,
            Code.expires_at.is_not(None),  # type: ignore[union-attr]
            Code.expires_at <= now,  # type: ignore[operator]
        )
    elif status == ACTIVE:
        query = query.where(
            Code.status == ACTIVE,
            or_(Code.expires_at.is_(None), Code.expires_at > now),  # type: ignore[union-attr,operator]
        )
    elif status is not None:
        query = query.where(Code.status == status)
    if cursor is not None:
        query = query.where(Code.id < cursor)
    rows = list(session.exec(query.order_by(Code.id.desc()).limit(limit + 1)).all())  # type: ignore[attr-defined]
    parties = parties_of(session, rows)
    return [
        code_view(row, parties, public_url=public_url, currency=currency, now=now) for row in rows
    ]


def scan(session: Session, typed: str, *, currency: str) -> dict[str, Any]:
    """The payer's view of a code named by its token or its typed short code."""
    code = resolve(session, typed)
    if code is None:
        raise NotFound("no such code")
    return scan_view(code, parties_of(session, [code]), currency=currency)
