"""Text for property-based tests, drawn from all of Unicode.

Hypothesis's default text strategy leaves out the surrogate category, and a lone surrogate is
exactly what a JSON ``\\ud800`` escape or a percent-escaped ``%ED%A0%80`` hands the server: a
``str`` that no UTF-8 encoder downstream accepts. Every fuzzer of the project draws its text
from here.
"""

from __future__ import annotations

from hypothesis import strategies as st

# The characters most likely to break an encoder, a database driver or a parser, drawn often
# on purpose rather than left to chance among 1.1 million code points.
EDGE_CHARACTERS = (
    "\ud800",  # a lone high surrogate
    "\udfff",  # a lone low surrogate
    "\x00",  # NUL: PostgreSQL's text refuses it
    "\ufffe",  # noncharacters
    "\uffff",
    "\ufdd0",
    "\U0010ffff",
    "\u202e",  # right-to-left override
    "\ufeff",  # byte order mark
    "\r",
    "\n",
    '"',
    "\\",
    "%",
    "'",
    "=",
)

characters = st.one_of(
    st.characters(codec=None, exclude_categories=()),
    st.sampled_from(EDGE_CHARACTERS),
)


def any_text(*, min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    """Any string of code points, lone surrogates, NUL and noncharacters included.

    Joined from a list rather than ``st.text(alphabet=characters)``: text() merges the
    alphabet's parts into one set of code points drawn evenly, which loses the weight given
    to the edge characters (a lone surrogate then showed up in none of 500 strings)."""
    return st.lists(characters, min_size=min_size, max_size=max_size).map("".join)
