"""An Idempotency-Key is 1-255 printable ASCII characters (U+0020-U+007E); any other string
of code points is refused as invalid input, never taken."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.errors import Invalid
from models.idempotency import validate_key
from tests.strategies import any_text


def _printable_ascii(key: str) -> bool:
    return 1 <= len(key) <= 255 and all(" " <= c <= "~" for c in key)


@given(
    st.one_of(
        # All of Unicode, lone surrogates included; and ASCII alone, where most keys are valid
        # and the edges (space, "~", control characters, DEL) are drawn often.
        any_text(max_size=300),
        st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=300),
    )
)
def test_a_key_is_taken_exactly_when_it_is_printable_ascii(key: str) -> None:
    if _printable_ascii(key):
        assert validate_key(key) == key
    else:
        with pytest.raises(Invalid):
            validate_key(key)


def test_the_edges_of_printable_ascii() -> None:
    assert validate_key(" ~") == " ~"
    assert validate_key("k" * 255) == "k" * 255
    for refused in ("", "k" * 256, "a\x1f", "a\x7f", "a\u00a0", "a\ud800"):
        with pytest.raises(Invalid):
            validate_key(refused)
    assert validate_key(None) is None
