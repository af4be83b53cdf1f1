"""Which language a page is in (spec §10): Accept-Language mapped as the spec lists it, the
person's remembered pick over it, English for anything else, and no header that breaks it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.i18n import (
    ENGLISH,
    LANGUAGES,
    SIMPLIFIED,
    TRADITIONAL,
    chosen_language,
    language_from_accept,
)
from tests.strategies import any_text


@pytest.mark.parametrize(
    ("header", "language"),
    [
        ("zh-CN", SIMPLIFIED),
        ("zh-SG", SIMPLIFIED),
        ("zh-Hans", SIMPLIFIED),
        ("zh-Hans-HK", SIMPLIFIED),
        ("zh-cn,zh;q=0.9", SIMPLIFIED),
        ("zh-TW", TRADITIONAL),
        ("zh-HK", TRADITIONAL),
        ("zh-MO", TRADITIONAL),
        ("zh-Hant", TRADITIONAL),
        ("zh-Hant-CN", TRADITIONAL),
        ("en-US,en;q=0.9", ENGLISH),
        ("fr-FR", ENGLISH),
        ("zh", ENGLISH),
        ("", ENGLISH),
        (None, ENGLISH),
        ("*", ENGLISH),
        # Preference order, not header order; q=0 means "not this one".
        ("en;q=0.5, zh-TW;q=0.8", TRADITIONAL),
        ("zh-CN;q=0, zh-TW;q=0.1", TRADITIONAL),
        ("fr, zh-CN;q=0.6, en;q=0.5", SIMPLIFIED),
        ("en-GB, zh-CN", ENGLISH),
        ("zh-CN;q=abc, zh-TW;q=0.2", TRADITIONAL),
    ],
)
def test_accept_language_maps_as_the_spec_lists(header: str | None, language: str) -> None:
    """zh-CN/zh-SG/zh-Hans → 简体, zh-TW/zh-HK/zh-MO/zh-Hant → 繁體, else English; the
    browser's most preferred range that names one of them decides."""
    assert language_from_accept(header) == language


def test_the_remembered_pick_wins_over_the_browser() -> None:
    """The cookie set by the page's language picker decides; an unknown value is ignored."""
    assert chosen_language("en", "zh-CN") == ENGLISH
    assert chosen_language("zh-TW", "en-US") == TRADITIONAL
    assert chosen_language("zh-CN", None) == SIMPLIFIED
    assert chosen_language("klingon", "zh-HK") == TRADITIONAL
    assert chosen_language("", "fr") == ENGLISH
    assert chosen_language(None, "zh-SG") == SIMPLIFIED


@given(header=any_text(max_size=300), cookie=st.one_of(st.none(), any_text()))
def test_any_header_or_cookie_gives_one_of_the_languages(header: str, cookie: str | None) -> None:
    """Whatever a client sends (any Unicode, lone surrogates, NUL), the answer is one of the
    three languages and never an error."""
    assert chosen_language(cookie, header) in LANGUAGES
