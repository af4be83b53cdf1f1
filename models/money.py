"""Money is an integer count of minor units; this module is the one gate amounts pass through."""

from __future__ import annotations

from typing import Any

from models.errors import Invalid

MAX_AMOUNT = 10**12
MINOR_DIGITS = 2


def parse_amount(value: Any, *, field: str = "amount", minimum: int = 1) -> int:
    """Accept only a true integer in [minimum, 10^12]: no floats, strings or bools."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{field} must be an integer number of minor units", field=field)
    if value < minimum or value > MAX_AMOUNT:
        raise Invalid(f"{field} must be between {minimum} and {MAX_AMOUNT}", field=field)
    return value


def format_amount(amount: int, currency: str) -> str:
    sign = "-" if amount < 0 else ""
    units, cents = divmod(abs(amount), 10**MINOR_DIGITS)
    return f"{sign}{units:,}.{cents:0{MINOR_DIGITS}d} {currency}"
