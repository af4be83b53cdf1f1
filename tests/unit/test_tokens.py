"""The token cache on its own: entries, revocation, and the read that raced a revocation."""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.tokens import TokenCache


@dataclass(frozen=True)
class Who:
    device_id: str


def test_a_revoked_device_is_forgotten_and_a_read_from_before_cannot_bring_it_back() -> None:
    """forget_device drops the device's token; a put whose database read began before the
    revocation is ignored, one that began after it is kept."""
    cache = TokenCache()
    before = time.monotonic()
    cache.put("h1", Who("d1"), before)
    assert cache.get("h1") == Who("d1")
    cache.forget_device("d1")
    assert cache.get("h1") is None
    cache.put("h1", Who("d1"), before)
    assert cache.get("h1") is None
    cache.put("h1", Who("d1"), time.monotonic())
    assert cache.get("h1") == Who("d1")


def test_an_entry_nobody_confirmed_within_max_age_is_not_served() -> None:
    """Past max_age without a sweep confirming it, the entry is not served."""
    cache = TokenCache(max_age=0.5)
    cache.put("h1", Who("d1"), time.monotonic() - 1.0)
    assert cache.get("h1") is None
    cache.put("h2", Who("d2"), time.monotonic())
    assert cache.get("h2") == Who("d2")


def test_a_new_token_of_a_device_replaces_its_old_one() -> None:
    """One entry per device: the device's previous token is no longer served from the cache."""
    cache = TokenCache()
    cache.put("old", Who("d1"), time.monotonic())
    cache.put("new", Who("d1"), time.monotonic())
    assert cache.get("old") is None
    assert cache.get("new") == Who("d1")
    assert len(cache) == 1
