"""Issuing collection codes (C3, C8, C10): the body's checks, the issuing agency, the code's
row and the view that answers it.

SQLite issues in its group commit's transaction (``issue``). PostgreSQL issues in one statement
(``issue_in_server``): the agency's check under its row lock, the INSERT and the
Idempotency-Key's record, from an agency this process has issued for before
(``KnownAgencies``); an agency it has not seen yet costs one read first."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

from sqlmodel import Session

from models import idempotency, shortcodes, sql
from models.accounts import Party
from models.agencies import ACTIVE as AGENCY_ACTIVE
from models.agencies import PENDING as AGENCY_PENDING
from models.clock import utcnow
from models.codes import (
    ACTIVE,
    DYNAMIC,
    FIELDS,
    JSON_AT,
    KINDS,
    MOMENT_AT,
    CodeRow,
    code_view,
)
from models.errors import Conflict, Invalid, NotFound, Unavailable
from models.events import Published
from models.ids import new_id
from models.money import MAX_AMOUNT, parse_amount
from models.sql import Tx

MIN_EXPIRES_IN = 60
MAX_EXPIRES_IN = 86_400
DYNAMIC_DEFAULT_EXPIRES_IN = 900
MAX_ITEMS = 100
MAX_ITEM_NAME = 200
MAX_QUANTITY = 10**6
MAX_LABEL = 100
MAX_MEMO = 500
# 24 random bytes = 192 bits, URL-safe: far past guessing, short enough for a dense QR code.
TOKEN_BYTES = 24


# --- the body ---------------------------------------------------------------------------------


def _integer(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{field} must be an integer", field=field)
    if not low <= value <= high:
        raise Invalid(f"{field} must be between {low} and {high}", field=field)
    return value


def _text(value: Any, field: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise Invalid(f"{field} must be a string of at most {limit} characters", field=field)
    return value.strip() or None


def _items(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ITEMS:
        raise Invalid(f"items must be a list of 1-{MAX_ITEMS} items", field="items")
    items = []
    for index, item in enumerate(value):
        field = f"items[{index}]"
        if not isinstance(item, dict):
            raise Invalid(f"{field} must be an object", field=field)
        name = item.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_ITEM_NAME:
            raise Invalid(
                f"{field}.name must be 1-{MAX_ITEM_NAME} characters", field=f"{field}.name"
            )
        items.append(
            {
                "name": name.strip(),
                "quantity": _integer(item.get("quantity"), f"{field}.quantity", 1, MAX_QUANTITY),
                "unit_amount": _integer(
                    item.get("unit_amount"), f"{field}.unit_amount", 0, MAX_AMOUNT
                ),
            }
        )
    return items


def _amount(kind: str, body: dict[str, Any], items: list[dict[str, Any]]) -> int | None:
    given = body.get("amount")
    if given is not None:
        given = parse_amount(given)
    if items:
        total = sum(item["quantity"] * item["unit_amount"] for item in items)
        if not 1 <= total <= MAX_AMOUNT:
            raise Invalid(f"the items must add up to between 1 and {MAX_AMOUNT}", field="items")
        if given is not None and given != total:
            raise Invalid(
                f"amount {given} is not the sum of the items ({total})",
                code="amount_mismatch",
                field="amount",
            )
        return total
    if given is None and kind == DYNAMIC:
        raise Invalid(
            "a dynamic code needs an amount or items", code="amount_required", field="amount"
        )
    return given


def _expires_in(kind: str, value: Any) -> int | None:
    if value is None:
        return DYNAMIC_DEFAULT_EXPIRES_IN if kind == DYNAMIC else None
    return _integer(value, "expires_in", MIN_EXPIRES_IN, MAX_EXPIRES_IN)


@dataclass(frozen=True, slots=True)
class _Asked:
    """What a valid body asks for."""

    kind: str
    label: str | None
    memo: str | None
    items: list[dict[str, Any]]
    amount: int | None
    expires_in: int | None
    agency_id: Any


def _asked(body: dict[str, Any]) -> _Asked:
    """The body checked whole before the agency is looked at, so a bad request is 422 whoever
    asks."""
    kind = body.get("kind")
    if kind not in KINDS:
        raise Invalid("kind must be static or dynamic", field="kind")
    label = _text(body.get("label"), "label", MAX_LABEL)
    memo = _text(body.get("memo"), "memo", MAX_MEMO)
    items = _items(body.get("items"))
    amount = _amount(kind, body, items)
    expires_in = _expires_in(kind, body.get("expires_in"))
    if "agency_id" not in body:
        raise Invalid("agency_id is required", field="agency_id")
    return _Asked(kind, label, memo, items, amount, expires_in, body["agency_id"])


# --- the agency -------------------------------------------------------------------------------

# The agency and both of its parties in one read; only the agency row is locked.
_ISSUING_AGENCY = (
    "SELECT agency.id, agency.payee_id, agency.agent_id, agency.status,"
    " payee.handle, payee.display_name, agent.handle, agent.display_name"
    " FROM agency JOIN account AS payee ON payee.id = agency.payee_id"
    " JOIN account AS agent ON agent.id = agency.agent_id"
    " WHERE agency.id = ?"
)
_ISSUING_AGENCY_LOCKED = _ISSUING_AGENCY + " FOR NO KEY UPDATE OF agency"


@dataclass(frozen=True, slots=True)
class IssuingAgency:
    id: str
    payee_id: str
    agent_id: str
    status: str
    payee_handle: str
    payee_display_name: str
    agent_handle: str
    agent_display_name: str

    def parties(self) -> dict[str, Party]:
        return {
            self.payee_id: Party(self.payee_id, self.payee_handle, self.payee_display_name),
            self.agent_id: Party(self.agent_id, self.agent_handle, self.agent_display_name),
        }


def _issuing_agency(tx: Tx, caller_id: str, value: Any, *, locked: bool) -> IssuingAgency:
    """The agency named in the body with its parties' names, refused unless the caller is one
    of them and the agency is active."""
    if not isinstance(value, str) or not value or len(value) > 40:
        raise Invalid("agency_id must be the id of an agency", field="agency_id")
    row = tx.one(_ISSUING_AGENCY_LOCKED if locked else _ISSUING_AGENCY, (value,))
    agency = IssuingAgency(*row) if row is not None else None
    if agency is None or caller_id not in (agency.payee_id, agency.agent_id):
        raise NotFound("no such agency", field="agency_id")
    if agency.status == AGENCY_PENDING:
        raise Conflict("the payee has not accepted this agency yet", code="agency_not_active")
    if agency.status != AGENCY_ACTIVE:
        raise Conflict("this agency was revoked", code="agency_revoked")
    return agency


class KnownAgencies:
    """Active agencies this process has issued codes for, by id, with their parties' names as
    a code's view shows them. An agency's payee and agent never change; what can (its status,
    the names) is checked by the statement that issues (``issue_in_server``), under the
    agency's row lock, and an agency found changed is read again. Used from the event loop
    only."""

    # An agency is a counter of a shop; past this many the oldest make room.
    LIMIT = 10_000

    def __init__(self) -> None:
        self._agencies: dict[str, IssuingAgency] = {}

    def get(self, agency_id: Any) -> IssuingAgency | None:
        return self._agencies.get(agency_id) if isinstance(agency_id, str) else None

    def remember(self, agency: IssuingAgency) -> None:
        if len(self._agencies) >= self.LIMIT and agency.id not in self._agencies:
            del self._agencies[next(iter(self._agencies))]
        self._agencies[agency.id] = agency

    def forget(self, agency_id: str) -> None:
        self._agencies.pop(agency_id, None)


# --- the code ---------------------------------------------------------------------------------


def _new_code(agency: IssuingAgency, caller_id: str, asked: _Asked) -> CodeRow:
    created_at = utcnow()
    expires_in = asked.expires_in
    return CodeRow(
        id=new_id("cod"),
        agency_id=agency.id,
        payee_id=agency.payee_id,
        agent_id=agency.agent_id,
        created_by_id=caller_id,
        kind=asked.kind,
        status=ACTIVE,
        label=asked.label,
        amount=asked.amount,
        items=asked.items,
        memo=asked.memo,
        token=secrets.token_urlsafe(TOKEN_BYTES),
        # 32^9 possibilities make a clash rare; the unique index refuses one, and the unit's
        # runner draws again (IntegrityError rolls the whole unit back).
        short_code=shortcodes.generate(),
        expires_at=created_at + timedelta(seconds=expires_in) if expires_in is not None else None,
        created_at=created_at,
        paid_payment_id=None,
    )


def _values(tx: Tx, code: CodeRow) -> list[Any]:
    values = [getattr(code, name) for name in FIELDS]
    for at in JSON_AT:
        values[at] = tx.json(values[at])
    for at in MOMENT_AT:
        values[at] = tx.moment(values[at])
    return values


_INSERT = f"INSERT INTO code ({', '.join(FIELDS)}) VALUES ({', '.join('?' for _ in FIELDS)})"


def issue(
    work: Session | Tx,
    caller_id: str,
    body: dict[str, Any],
    *,
    public_url: str,
    currency: str,
) -> tuple[dict[str, Any], list[Published]]:
    """Generate a code for an active agency, asked for by its payee or its agent (C10), in the
    caller's transaction. No event is written: the code comes back to the client that asked
    for it."""
    asked = _asked(body)
    tx = sql.tx(work)
    # Revoke updates the agency row before it revokes the codes, so holding it here orders the
    # two: either this code exists when revoke's update runs, or we see the revocation.
    agency = _issuing_agency(tx, caller_id, asked.agency_id, locked=not tx.is_sqlite)
    code = _new_code(agency, caller_id, asked)
    tx.run(_INSERT, _values(tx, code))
    return code_view(code, agency.parties(), public_url=public_url, currency=currency), []


# --- one statement on PostgreSQL --------------------------------------------------------------

# The agency as the process holds it, still so, its row locked as ``issue`` locks it.
_HELD = (
    "SELECT agency.id FROM agency"
    " JOIN account AS payee ON payee.id = agency.payee_id"
    " JOIN account AS agent ON agent.id = agency.agent_id"
    f" WHERE agency.id = ? AND agency.status = '{AGENCY_ACTIVE}'"
    " AND payee.handle = ? AND payee.display_name = ?"
    " AND agent.handle = ? AND agent.display_name = ?"
    " FOR NO KEY UPDATE OF agency"
)
# Typed, for a value INSERT ... SELECT takes from a parameter.
_CASTS = {
    "amount": "bigint",
    "items": "json",
    "expires_at": "timestamptz",
    "created_at": "timestamptz",
}


@lru_cache(maxsize=2)
def _issue_held(keyed: bool) -> str:
    """The agency's check, the code's INSERT if the agency is still as held (and, with a key,
    nothing is stored under it), the key's record after the INSERT: one statement, one
    transaction. Answers whether the agency was still so, then the key's stored record."""
    values = ", ".join(f"?::{_CASTS.get(name, 'text')}" for name in FIELDS)
    parts = [f"WITH held AS ({_HELD})"]
    unless_stored = ""
    if keyed:
        parts.append(f", stored AS ({idempotency.FIND})")
        unless_stored = " WHERE NOT EXISTS (SELECT 1 FROM stored)"
    parts.append(
        f", issued AS (INSERT INTO code ({', '.join(FIELDS)}) SELECT {values} FROM held"
        f"{unless_stored} RETURNING code.id)"
    )
    if keyed:
        parts.append(f", recorded AS ({idempotency.RECORD_SELECTED} FROM issued)")
        parts.append(
            " SELECT EXISTS (SELECT 1 FROM held), stored.*"
            " FROM (SELECT 1) AS one LEFT JOIN stored ON true"
        )
    else:
        parts.append(" SELECT EXISTS (SELECT 1 FROM held)")
    return "".join(parts)


def issue_in_server(
    tx: Tx,
    caller_id: str,
    body: dict[str, Any],
    claim: idempotency.Claim | None,
    known: KnownAgencies,
    *,
    public_url: str,
    currency: str,
) -> tuple[int, Any, list[Published]]:
    """``issue`` with the key's lookup and record in one statement (``tx`` is an autocommit
    connection): the response is built from the agency as ``known`` holds it, and the
    statement writes only if the agency is still so. An agency not held yet, or found
    changed, is read first (and refused there if it must be). Returns the status, the body
    and no events; a key already recorded returns its stored response."""
    asked = _asked(body)
    agency = known.get(asked.agency_id)
    if agency is None or caller_id not in (agency.payee_id, agency.agent_id):
        agency = _issuing_agency(tx, caller_id, asked.agency_id, locked=False)
    for _ in range(3):
        code = _new_code(agency, caller_id, asked)
        view = code_view(code, agency.parties(), public_url=public_url, currency=currency)
        held = (agency.id, agency.payee_handle, agency.payee_display_name)
        held += (agency.agent_handle, agency.agent_display_name)
        if claim is None:
            row = tx.one(_issue_held(False), (*held, *_values(tx, code)))
        else:
            recorded = claim.recorded(tx, 201, view, code.created_at)
            row = tx.one(
                _issue_held(True),
                (*held, *claim.where(), *_values(tx, code), *recorded),
            )
        assert row is not None
        if claim is not None and row[1] is not None:
            stored = idempotency.stored(tx, claim, row[1:])
            if stored is not None:
                return stored.status_code, stored.body, []
            continue  # a stale record, dropped: the key is fresh again
        if row[0]:
            known.remember(agency)
            return 201, view, []
        known.forget(agency.id)
        agency = _issuing_agency(tx, caller_id, asked.agency_id, locked=False)
    # Only if the agency's parties were renamed between every try and the next.
    raise Unavailable("the agency changed while the code was issued", retry_after=1)
