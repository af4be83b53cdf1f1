"""What the browser tests need to tell the page's languages apart: the catalogs' own texts."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from app.i18n.extract import load

# Everything a person reads on a page, accessible names included; the language picker shows
# each language in itself by design, so it is left out.
PAGE_TEXT = """() => {
  const names = [...document.querySelectorAll('[aria-label], [alt], [title], [placeholder]')]
    .filter((e) => !e.closest('#lang'))
    .map((e) => ['aria-label', 'alt', 'title', 'placeholder']
      .map((a) => e.getAttribute(a) || '').join(' '));
  const clone = document.body.cloneNode(true);
  clone.querySelector('#lang')?.remove();
  return [document.title, clone.innerText, ...names].join('\\n');
}"""

LATIN_WORD = re.compile(r"[A-Za-z]{3,}")
# Code-like things that are the same in every language: the product's name, short codes,
# opaque ids, the /pay path, the "CSV" file format.
CODE_LIKE = re.compile(
    r"paycode|[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{2}|(?<![A-Za-z0-9])[a-z]+_[0-9A-Za-z]{10,}"
    r"|/pay\b|\bCSV\b"
)
HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


@cache
def only_in(locale: str, other: str) -> frozenset[str]:
    """Han characters the `locale` catalog writes and the `other` never does (码 vs 碼)."""

    def chars(name: str) -> set[str]:
        return {c for m in load(name) if m.id for c in str(m.string) if HAN.match(c)}

    return frozenset(chars(locale) - chars(other))


def page_text(page: Any, *user_data: str) -> str:
    """The page's own text with the people's data (names, handles, labels) taken out."""
    text = str(page.evaluate(PAGE_TEXT))
    for value in sorted(user_data, key=len, reverse=True):
        text = text.replace(value, " ")
    return CODE_LIKE.sub(" ", text)


def assert_in_language(page: Any, lang: str, *user_data: str) -> None:
    """The page is in `lang` with no string of another: <html lang>, no English word on a
    Chinese page, no character of the other Chinese script, no Chinese on an English page."""
    assert page.evaluate("document.documentElement.lang") == lang
    text = page_text(page, *user_data)
    if lang == "en":
        assert HAN.findall(text) == [], text
        return
    assert LATIN_WORD.findall(text) == [], (LATIN_WORD.findall(text), text)
    other = "zh_TW" if lang == "zh-CN" else "zh_CN"
    own = lang.replace("-", "_")
    foreign = sorted({c for c in text if c in only_in(other, own)})
    assert foreign == [], f"{lang} page shows {other} characters {foreign}: {text}"
