"""Typed short codes (C4): 9 random Crockford base32 characters and a Luhn mod 32 check
character, shown as XXXX-XXXX-XX. Luhn mod N catches every single-character substitution and
most adjacent transpositions, so a mistyped code is refused instead of paying someone else."""

from __future__ import annotations

import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
BASE = len(ALPHABET)
DATA_LENGTH = 9
LENGTH = DATA_LENGTH + 1
_VALUE = {char: index for index, char in enumerate(ALPHABET)}
# What people type for what they read: Crockford's decoding rules.
_CONFUSABLE = str.maketrans({"O": "0", "I": "1", "L": "1"})


def check_character(data: str) -> str:
    total = 0
    factor = 2
    for char in reversed(data):
        addend = factor * _VALUE[char]
        total += addend // BASE + addend % BASE
        factor = 1 if factor == 2 else 2
    return ALPHABET[(BASE - total % BASE) % BASE]


def generate() -> str:
    """A fresh short code in canonical form (10 characters, no separators)."""
    data = "".join(secrets.choice(ALPHABET) for _ in range(DATA_LENGTH))
    return data + check_character(data)


def normalize(typed: str) -> str | None:
    """The canonical form of what a person typed, or None if it cannot be a valid short code.

    Case-insensitive; '-' and spaces ignored; O reads as 0 and I, L as 1."""
    candidate = typed.upper().replace("-", "").replace(" ", "").translate(_CONFUSABLE)
    if len(candidate) != LENGTH or any(char not in _VALUE for char in candidate):
        return None
    if check_character(candidate[:DATA_LENGTH]) != candidate[DATA_LENGTH]:
        return None
    return candidate


def display(canonical: str) -> str:
    return f"{canonical[:4]}-{canonical[4:8]}-{canonical[8:]}"
