"""Concurrent first deposits on a fresh database: both succeed and share one funding account
(the platform's side of every deposit is created once, whoever gets there first)."""

from __future__ import annotations

import threading

from models import accounts, ledger
from models.db import Database


def test_concurrent_first_deposits_share_one_funding_account(database_url: str) -> None:
    """Two transactions that both find no funding account and create it: neither fails, and
    there is exactly one funding account holding minus the deposits."""
    db = Database(database_url)
    try:
        with db.write() as session:
            for handle in ("first", "second"):
                accounts.sign_up(session, handle, handle, "long enough")
        start = threading.Barrier(2, timeout=60)
        failures: list[BaseException] = []

        def deposit(handle: str) -> None:
            try:
                start.wait()
                with db.write() as session:
                    ledger.deposit(session, handle, 500, "CNY")
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=deposit, args=(h,)) for h in ("first", "second")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a deposit never finished"
        assert failures == []
        with db.read() as session:
            funding = accounts.funding_account(session)
            assert funding.balance == -1000
            assert ledger.ledger_sum(session, funding.id) == -1000
    finally:
        db.dispose()
