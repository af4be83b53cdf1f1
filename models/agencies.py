"""Agencies: who collects for whom (C3, C9, C10), with consent from the payee."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, text
from sqlmodel import Field, Session, SQLModel, select

from models.accounts import Account, get_by_handle, lock_accounts, party
from models.clock import rfc3339, utcnow
from models.errors import Conflict, Forbidden, Invalid, NotFound
from models.events import AGENCY_ACTIVATED, AGENCY_REQUESTED, AGENCY_REVOKED, Published, append
from models.ids import new_id

PENDING = "pending"
ACTIVE = "active"
REVOKED = "revoked"
STATUSES = (PENDING, ACTIVE, REVOKED)


class Agency(SQLModel, table=True):
    __tablename__ = "agency"
    __table_args__ = (
        # At most one agency per pair that is not revoked; revoked ones stay as history.
        Index(
            "uq_agency_open_pair",
            "payee_id",
            "agent_id",
            unique=True,
            sqlite_where=text("status != 'revoked'"),
            postgresql_where=text("status != 'revoked'"),
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    payee_id: str = Field(foreign_key="account.id", index=True, max_length=40)
    agent_id: str = Field(foreign_key="account.id", index=True, max_length=40)
    status: str = Field(max_length=16)
    label: str | None = Field(default=None, max_length=100)
    can_refund: bool = Field(default=False)
    created_by_id: str = Field(foreign_key="account.id", max_length=40)
    created_at: datetime = Field(default_factory=utcnow)
    activated_at: datetime | None = Field(default=None)
    revoked_at: datetime | None = Field(default=None)


def agency_view(agency: Agency, parties: dict[str, Account]) -> dict[str, Any]:
    return {
        "id": agency.id,
        "payee": party(parties[agency.payee_id]),
        "agent": party(parties[agency.agent_id]),
        "status": agency.status,
        "label": agency.label,
        "can_refund": agency.can_refund,
        "created_by": party(parties[agency.created_by_id]),
        "created_at": rfc3339(agency.created_at),
    }


def parties_of(session: Session, agencies: list[Agency]) -> dict[str, Account]:
    ids = {i for a in agencies for i in (a.payee_id, a.agent_id, a.created_by_id)}
    if not ids:
        return {}
    rows = session.exec(select(Account).where(Account.id.in_(sorted(ids)))).all()  # type: ignore[union-attr]
    return {row.id: row for row in rows}


def view(session: Session, agency: Agency) -> dict[str, Any]:
    return agency_view(agency, parties_of(session, [agency]))


def _notify(
    session: Session, agency: Agency, type_: str, recipients: set[str]
) -> tuple[dict[str, Any], list[Published]]:
    locked = lock_accounts(session, recipients | {agency.payee_id, agency.agent_id})
    body = agency_view(agency, {**parties_of(session, [agency]), **locked})
    return body, [append(session, locked[i], type_, body) for i in sorted(recipients)]


def _optional_label(body: dict[str, Any]) -> str | None:
    label = body.get("label")
    if label is None:
        return None
    if not isinstance(label, str) or len(label) > 100:
        raise Invalid("label must be a string of at most 100 characters", field="label")
    return label.strip() or None


def create(
    session: Session, caller: Account, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Published]]:
    """Payee names an agent: active at once. Agent names a payee: pending until accepted."""
    if ("agent" in body) == ("payee" in body):
        raise Invalid("give exactly one of agent or payee", field="agent")
    can_refund = body.get("can_refund", False)
    if not isinstance(can_refund, bool):
        raise Invalid("can_refund must be true or false", field="can_refund")
    label = _optional_label(body)
    if "agent" in body:
        other = get_by_handle(session, body["agent"], field="agent")
        payee, agent, status = caller, other, ACTIVE
    else:
        other = get_by_handle(session, body["payee"], field="payee")
        payee, agent, status = other, caller, PENDING
    open_pair = session.exec(
        select(Agency.id).where(
            Agency.payee_id == payee.id, Agency.agent_id == agent.id, Agency.status != REVOKED
        )
    ).first()
    if open_pair is not None:
        raise Conflict("an agency for this pair exists already", code="agency_exists")
    now = utcnow()
    agency = Agency(
        id=new_id("agc"),
        payee_id=payee.id,
        agent_id=agent.id,
        status=status,
        label=label,
        can_refund=can_refund,
        created_by_id=caller.id,
        created_at=now,
        activated_at=now if status == ACTIVE else None,
    )
    session.add(agency)
    session.flush()
    if status == ACTIVE:
        return _notify(session, agency, AGENCY_ACTIVATED, {payee.id, agent.id})
    return _notify(session, agency, AGENCY_REQUESTED, {payee.id, agent.id})


def get_visible(session: Session, caller_id: str, agency_id: str) -> Agency:
    agency = session.get(Agency, agency_id)
    if agency is None or caller_id not in (agency.payee_id, agency.agent_id):
        raise NotFound("no such agency")
    return agency


def accept(
    session: Session, caller_id: str, agency_id: str
) -> tuple[dict[str, Any], list[Published]]:
    agency = get_visible(session, caller_id, agency_id)
    if agency.payee_id != caller_id:
        raise Forbidden("only the payee can accept an agency request")
    if agency.status != PENDING:
        raise Conflict("this agency is not pending", code="agency_not_pending")
    agency.status = ACTIVE
    agency.activated_at = utcnow()
    session.add(agency)
    return _notify(session, agency, AGENCY_ACTIVATED, {agency.payee_id, agency.agent_id})


def revoke(
    session: Session, caller_id: str, agency_id: str
) -> tuple[dict[str, Any], list[Published]]:
    """The payee revokes or the agent resigns; final."""
    agency = get_visible(session, caller_id, agency_id)
    if agency.status == REVOKED:
        raise Conflict("this agency is revoked already", code="agency_revoked")
    agency.status = REVOKED
    agency.revoked_at = utcnow()
    session.add(agency)
    return _notify(session, agency, AGENCY_REVOKED, {agency.payee_id, agency.agent_id})


def list_for(
    session: Session,
    caller_id: str,
    role: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> list[dict[str, Any]]:
    query = select(Agency)
    if role == "agent":
        query = query.where(Agency.agent_id == caller_id)
    elif role == "payee":
        query = query.where(Agency.payee_id == caller_id)
    else:
        query = query.where((Agency.agent_id == caller_id) | (Agency.payee_id == caller_id))
    if status is not None:
        query = query.where(Agency.status == status)
    if cursor is not None:
        query = query.where(Agency.id < cursor)
    rows = list(session.exec(query.order_by(Agency.id.desc()).limit(limit + 1)).all())  # type: ignore[attr-defined]
    parties = parties_of(session, rows)
    return [agency_view(row, parties) for row in rows]
