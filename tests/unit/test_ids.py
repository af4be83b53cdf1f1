"""Identifiers: a prefix, 10 Crockford digits of milliseconds, 16 of randomness."""

from __future__ import annotations

import time

from models.ids import CROCKFORD, new_id


def test_an_id_is_its_prefix_and_26_crockford_digits() -> None:
    made = new_id("msg")
    prefix, _, digits = made.partition("_")
    assert prefix == "msg" and len(digits) == 26 and set(digits) <= set(CROCKFORD)


def test_ids_sort_in_the_order_they_were_made_across_milliseconds() -> None:
    made = []
    for _ in range(5):
        made += [new_id("pay") for _ in range(50)]
        time.sleep(0.002)
    stamps = [m[4:14] for m in made]
    assert stamps == sorted(stamps) and len(set(stamps)) >= 5
    assert sorted(made[:50])[0][4:14] == stamps[0]


def test_the_random_digits_take_every_value_and_never_repeat() -> None:
    made = [new_id("evt") for _ in range(20_000)]
    assert len(set(made)) == len(made)
    randoms = "".join(m[14:] for m in made)
    assert set(randoms) == set(CROCKFORD)
    # 80 random bits in 16 digits: the last digit takes every value too (no padding bits).
    assert {m[-1] for m in made} == set(CROCKFORD)
