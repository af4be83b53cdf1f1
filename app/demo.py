"""The demo shop: an owner, two clerks collecting for it, and a customer with money."""

from __future__ import annotations

from app.settings import Settings
from models import accounts, ledger
from models.db import Database
from models.money import format_amount

DEMO_PASSWORD = "paycode-demo"
OWNER = ("shop", "Corner Shop")
CLERKS = [("alice", "Alice (counter 1)"), ("bob", "Bob (counter 2)")]
CUSTOMER = ("carol", "Carol Customer")
CUSTOMER_FUNDS = 100_000


def seed(db: Database, currency: str) -> bool:
    """Create the demo accounts once; returns False when they already exist."""
    from models import agencies

    with db.write() as session:
        if accounts.find_by_handle(session, OWNER[0]) is not None:
            return False
        made = {
            handle: accounts.sign_up(session, handle, name, DEMO_PASSWORD)
            for handle, name in [OWNER, *CLERKS, CUSTOMER]
        }
        owner = made[OWNER[0]]
        for index, (handle, _name) in enumerate(CLERKS, start=1):
            agencies.create(
                session,
                owner,
                {"agent": handle, "label": f"Counter {index}", "can_refund": index == 1},
            )
        ledger.deposit(session, CUSTOMER[0], CUSTOMER_FUNDS, currency)
    return True


def seed_and_print(settings: Settings) -> None:
    db = Database(settings.database_url, pool_size=1)
    try:
        created = seed(db, settings.currency)
    finally:
        db.dispose()
    base = settings.public_url
    print("paycode demo " + ("seeded" if created else "already seeded"))
    print(f"  password for every demo login: {DEMO_PASSWORD}")
    print(f"  shop owner (payee):   {OWNER[0]:<6} -> {base}/dashboard")
    for handle, _ in CLERKS:
        print(f"  clerk (agent):        {handle:<6} -> {base}/counter")
    funds = format_amount(CUSTOMER_FUNDS, settings.currency)
    print(f"  customer (payer):     {CUSTOMER[0]:<6} -> {base}/pay  (balance {funds})")
    print(f"  API:                  {base}/api/v1   (OpenAPI: {base}/openapi.json)")
