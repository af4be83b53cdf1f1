"""The data of paycode and its rules: tables, money, domain errors, the unit of work.

Importing this package registers every table on ``SQLModel.metadata`` (Alembic relies on it).
"""

from models import (
    accounts,
    agencies,
    codes,
    events,
    idempotency,
    ledger,
    payments,
    ratelimit,
    receipts,
    webhooks,
)

__all__ = [
    "accounts",
    "agencies",
    "codes",
    "events",
    "idempotency",
    "ledger",
    "payments",
    "ratelimit",
    "receipts",
    "webhooks",
]
