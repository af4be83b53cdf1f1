"""Opaque, time-ordered identifiers: a type prefix and 26 Crockford base32 characters.

The first 10 characters encode the creation time in milliseconds, so ordering by id is
ordering by creation (to the millisecond) and an id is a stable pagination cursor.
"""

from __future__ import annotations

import base64
import os
import time

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# base64's RFC 4648 base32 digits, in value order, to Crockford's: 80 random bits are 10
# bytes are 16 digits, encoded by C code instead of a Python loop per digit.
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", CROCKFORD.encode())
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
    random = base64.b32encode(os.urandom(10)).translate(_TO_CROCKFORD).decode()
    return f"{prefix}_{last[1]}{random}"
