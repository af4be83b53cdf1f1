"""The command line: demo seeding and deposits through the ledger, on a real database."""

from __future__ import annotations

from app.cli import main
from app.demo import CUSTOMER, CUSTOMER_FUNDS
from models import accounts, ledger
from models.db import Database


def test_demo_seeds_once_and_deposit_goes_through_the_ledger(database_url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    """`paycode demo` makes the shop, clerks with active agencies and a funded customer;
    running it again changes nothing; `paycode deposit` adds a balanced ledger transaction."""
    assert main(["demo", "--database-url", database_url]) == 0
    assert "paycode-demo" in capsys.readouterr().out
    assert main(["demo", "--database-url", database_url]) == 0
    assert main(["deposit", CUSTOMER[0], "250", "--database-url", database_url]) == 0
    db = Database(database_url)
    try:
        with db.read() as session:
            customer = accounts.find_by_handle(session, CUSTOMER[0])
            assert customer is not None
            assert customer.balance == CUSTOMER_FUNDS + 250
            assert ledger.ledger_sum(session, customer.id) == customer.balance
            funding = accounts.funding_account(session)
            assert ledger.ledger_sum(session, funding.id) == -(CUSTOMER_FUNDS + 250)
    finally:
        db.dispose()
