"""Typed short codes (spec §6, C4): Crockford base32, a check character that catches every
single-character error, and forgiving typing rules."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from models import shortcodes

DISPLAY_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{2}$")
# Fixed codes whose every digit position is tried, plus ones full of the awkward characters.
SAMPLES = ["000000000", "ZZZZZZZZZ", "0123456789"[:9], "ABCDEFGHJ", "1Z0Y9X8W7", "KMNPQRSTV"]

data_strings = st.text(alphabet=shortcodes.ALPHABET, min_size=9, max_size=9)


def with_check(data: str) -> str:
    return data + shortcodes.check_character(data)


def test_the_alphabet_is_crockford_base32() -> None:
    """32 symbols, digits and capitals without I, L, O and U."""
    assert len(shortcodes.ALPHABET) == 32
    assert set(shortcodes.ALPHABET) == set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def test_generated_codes_are_valid_unique_and_displayed_in_groups() -> None:
    """10,000 fresh codes: all distinct, all pass their check, all shown as XXXX-XXXX-XX."""
    generated = [shortcodes.generate() for _ in range(10_000)]
    assert len(set(generated)) == len(generated)
    for code in generated:
        assert len(code) == shortcodes.LENGTH
        assert shortcodes.normalize(code) == code
        assert DISPLAY_RE.fullmatch(shortcodes.display(code))


def test_every_single_character_substitution_is_refused() -> None:
    """Exhaustively: change any one character of a valid code to any other symbol and the
    check character no longer matches, so a typo never names another code."""
    for data in SAMPLES:
        code = with_check(data)
        assert shortcodes.normalize(code) == code
        for position in range(shortcodes.LENGTH):
            for symbol in shortcodes.ALPHABET:
                if symbol == code[position]:
                    continue
                typo = code[:position] + symbol + code[position + 1 :]
                assert shortcodes.normalize(typo) is None, (code, typo)


def test_a_character_outside_the_alphabet_is_refused() -> None:
    """U is not Crockford (and not a confusable), nor is punctuation other than '-'."""
    code = with_check("ABCDEFGHJ")
    for bad in ("U", "*", "_", "é"):
        assert shortcodes.normalize(bad + code[1:]) is None


def test_wrong_lengths_are_refused() -> None:
    """One character too few or too many is never a code, whatever the check says."""
    code = with_check("ABCDEFGHJ")
    assert shortcodes.normalize(code[:-1]) is None
    assert shortcodes.normalize(code + "0") is None
    assert shortcodes.normalize("") is None
    assert shortcodes.normalize("----") is None


def test_typing_is_case_insensitive_and_ignores_dashes_and_spaces() -> None:
    """Lower case, the display dashes, extra dashes and spaces all read the same code."""
    code = with_check("ABCDEFGHJ")
    shown = shortcodes.display(code)
    for typed in (shown, shown.lower(), code.lower(), f"  {shown} ", shown.replace("-", " "),
                  "a-b-c-d-e-f-g-h-j-" + code[-1].lower(), "ab cd ef gh j" + code[-1]):  # fmt: skip
        assert shortcodes.normalize(typed) == code, typed


def test_o_reads_as_zero_and_i_and_l_read_as_one() -> None:
    """The letters people confuse with digits are read as those digits, either case."""
    code = with_check("0101A0101")
    typed = code.replace("0", "O").replace("1", "I", 2).replace("1", "l")
    assert typed != code
    assert shortcodes.normalize(typed) == code
    assert shortcodes.normalize(typed.lower()) == code


@given(data=data_strings)
def test_any_data_with_its_check_character_is_accepted(data: str) -> None:
    """The check character is defined for every possible 9 symbols of data."""
    code = with_check(data)
    assert shortcodes.normalize(code) == code


@given(data=data_strings, position=st.integers(0, 9), offset=st.integers(1, 31))
def test_a_random_substitution_is_refused(data: str, position: int, offset: int) -> None:
    """The exhaustive test above, at random over all codes."""
    code = with_check(data)
    symbol = shortcodes.ALPHABET[(shortcodes.ALPHABET.index(code[position]) + offset) % 32]
    assert shortcodes.normalize(code[:position] + symbol + code[position + 1 :]) is None


@given(
    data=st.data(),
    separators=st.lists(st.sampled_from(["-", " ", "--", " - "]), min_size=11, max_size=11),
)
def test_generate_display_and_type_back_round_trips(
    data: st.DataObject, separators: list[str]
) -> None:
    """Whatever case and separators a person adds to a generated code, it reads back the same."""
    code = shortcodes.generate()
    lower = data.draw(st.lists(st.booleans(), min_size=10, max_size=10))
    spread = [sep * bool(data.draw(st.booleans())) for sep in separators]
    typed = spread[0] + "".join(
        (char.lower() if low else char) + sep
        for char, low, sep in zip(code, lower, spread[1:], strict=True)
    )
    assert shortcodes.normalize(typed) == code
    assert shortcodes.normalize(shortcodes.display(code)) == code
