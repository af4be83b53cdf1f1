"""The books check behind ``paycode verify``: each rule is one aggregate query, and each
broken rule becomes one line saying what is wrong."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, select

from models.accounts import FUNDING, Account
from models.codes import DYNAMIC, PAID, Code
from models.events import Event
from models.ledger import Deposit, LedgerEntry
from models.payments import Payment, refund_sums

MAX_REPORTED = 20


def _ledger_balanced(session: Session) -> list[str]:
    rows = session.exec(
        select(LedgerEntry.txn_id, func.sum(LedgerEntry.amount))
        .group_by(LedgerEntry.txn_id)
        .having(func.sum(LedgerEntry.amount) != 0)
        .limit(MAX_REPORTED)
    ).all()
    return [f"ledger transaction {txn} sums to {total}, not 0" for txn, total in rows]


def _balances_match_ledger(session: Session) -> list[str]:
    sums = dict(
        session.exec(
            select(LedgerEntry.account_id, func.sum(LedgerEntry.amount)).group_by(
                LedgerEntry.account_id
            )
        ).all()
    )
    problems = []
    for account_id, handle, balance in session.exec(
        select(Account.id, Account.handle, Account.balance)
    ).all():
        expected = int(sums.get(account_id) or 0)
        if balance != expected:
            problems.append(
                f"account {handle} has balance {balance}, its ledger sums to {expected}"
            )
    return problems


def _money_conserved(session: Session) -> list[str]:
    deposits = int(session.exec(select(func.coalesce(func.sum(Deposit.amount), 0))).one())
    users = int(
        session.exec(
            select(func.coalesce(func.sum(Account.balance), 0)).where(Account.kind != FUNDING)
        ).one()
    )
    funding = int(
        session.exec(
            select(func.coalesce(func.sum(Account.balance), 0)).where(Account.kind == FUNDING)
        ).one()
    )
    problems = []
    if users != deposits:
        problems.append(f"user balances add up to {users}, deposits to {deposits}")
    if funding != -deposits:
        problems.append(f"the funding account holds {funding}, expected {-deposits}")
    negative = session.exec(
        select(Account.handle, Account.balance).where(Account.kind != FUNDING, Account.balance < 0)
    ).all()
    problems += [
        f"account {handle} has a negative balance {balance}" for handle, balance in negative
    ]
    return problems


def _events_gapless(session: Session) -> list[str]:
    stats = {
        account_id: (int(count), int(low), int(high))
        for account_id, count, low, high in session.exec(
            select(
                Event.account_id, func.count(), func.min(Event.seq), func.max(Event.seq)
            ).group_by(Event.account_id)
        ).all()
    }
    problems = []
    for account_id, handle, last_seq in session.exec(
        select(Account.id, Account.handle, Account.last_seq)
    ).all():
        count, low, high = stats.get(account_id, (0, 1, 0))
        # (account, seq) is the primary key, so count == high with low == 1 means 1..high.
        if count != high or low != 1 or high != last_seq:
            problems.append(
                f"account {handle} events are not gapless 1..{last_seq}: "
                f"{count} events, seq {low}..{high}"
            )
    return problems


def _payments_consistent(session: Session) -> list[str]:
    problems = []
    refunds = refund_sums(session)
    for payment_id, amount, refunded in session.exec(
        select(Payment.id, Payment.amount, Payment.refunded_amount)
    ).all():
        if refunds.get(payment_id, 0) != refunded:
            problems.append(
                f"payment {payment_id} shows {refunded} refunded, its refunds add up to "
                f"{refunds.get(payment_id, 0)}"
            )
        if refunded > amount:
            problems.append(f"payment {payment_id} refunded {refunded} of {amount}")
    paid_by = dict(
        session.exec(select(Payment.code_id, Payment.id).where(Payment.code_kind == DYNAMIC)).all()
    )
    for code_id, status, paid_payment_id in session.exec(
        select(Code.id, Code.status, Code.paid_payment_id).where(Code.kind == DYNAMIC)
    ).all():
        if (status == PAID) != (code_id in paid_by) or (
            status == PAID and paid_payment_id != paid_by[code_id]
        ):
            problems.append(
                f"dynamic code {code_id} is {status} but its payment is "
                f"{paid_by.get(code_id) or 'missing'}"
            )
    return problems


CHECKS = (
    ("ledger transactions balance", _ledger_balanced),
    ("balances equal their ledger sums", _balances_match_ledger),
    ("money is conserved", _money_conserved),
    ("events are gapless", _events_gapless),
    ("payments, refunds and codes agree", _payments_consistent),
)


def check(session: Session) -> list[str]:
    """Every broken rule of the books, as lines of text; empty when all hold."""
    problems: list[str] = []
    for _name, rule in CHECKS:
        problems.extend(rule(session)[:MAX_REPORTED])
    return problems


def check_database(database_url: str) -> list[str]:
    """Check the books of a database from one consistent snapshot, so payments committing
    meanwhile never show up as half-applied."""
    from models.db import Database

    db = Database(database_url, pool_size=1)
    try:
        engine = db.reader
        if not db.is_sqlite:
            engine = engine.execution_options(isolation_level="REPEATABLE READ")  # type: ignore[assignment]
        # SQLite: one deferred read transaction in WAL mode is one snapshot already.
        with Session(engine) as session, session.begin():
            return check(session)
    finally:
        db.dispose()
