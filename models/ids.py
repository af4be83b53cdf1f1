"""Opaque, time-ordered identifiers: a type prefix and 26 Crockford base32 characters.

The first 10 characters encode the creation time in milliseconds, so ordering by id is
ordering by creation (to the millisecond) and an id is a stable pagination cursor.
"""

from __future__ import annotations

import os
import time

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every pair of digits by its 10-bit value: 80 random bits are eight pairs, eight lookups
# (base64.b32encode, Python code too, took 2.4 times as long).
_PAIRS = tuple(high + low for high in CROCKFORD for low in CROCKFORD)
# The time digits of the last millisecond an id was made in: every id of a busy
# millisecond shares them. One tuple, replaced whole, so threads never see half of it.
_last_millis: tuple[int, str] = (-1, "")


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(CROCKFORD[digit])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    global _last_millis
    millis = time.time_ns() // 1_000_000
    last = _last_millis
    if last[0] != millis:
        last = _last_millis = (millis, _base32(millis, 10))
    bits = int.from_bytes(os.urandom(10))
    pairs = _PAIRS
    random = (
        pairs[bits >> 70]
        + pairs[bits >> 60 & 1023]
        + pairs[bits >> 50 & 1023]
        + pairs[bits >> 40 & 1023]
        + pairs[bits >> 30 & 1023]
        + pairs[bits >> 20 & 1023]
        + pairs[bits >> 10 & 1023]
        + pairs[bits & 1023]
    )
    return f"{prefix}_{last[1]}{random}"
