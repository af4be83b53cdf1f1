"""Languages of the pages (spec §10): which one a request gets, and its message catalog.

English is the source language: the messages in the templates and the JavaScript modules are
English, and app/locales/<locale>/LC_MESSAGES/messages.po hold the Chinese ones. The .po files
are compiled with Babel when first used, so a fresh clone runs without a build step and there is
no compiled copy to fall out of step with them."""

from __future__ import annotations

import gettext
import io
import re
from functools import cache
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"
DOMAIN = "messages"

# The page's <html lang> for each language, and the catalog locale that translates it.
ENGLISH = "en"
SIMPLIFIED = "zh-CN"
TRADITIONAL = "zh-TW"
LANGUAGES = (SIMPLIFIED, TRADITIONAL, ENGLISH)
CATALOG_LOCALE = {SIMPLIFIED: "zh_CN", TRADITIONAL: "zh_TW"}
# Each language named in itself, as a picker shows it to someone who cannot read the others.
AUTONYMS = {SIMPLIFIED: "简体中文", TRADITIONAL: "繁體中文", ENGLISH: "English"}

# The person's own pick, remembered on the device; it wins over Accept-Language.
COOKIE = "paycode_lang"

_SIMPLIFIED_REGIONS = {"cn", "sg"}
_TRADITIONAL_REGIONS = {"tw", "hk", "mo"}
_RANGE = re.compile(r"^[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*$")


def language_of_tag(tag: str) -> str | None:
    """The page language for one BCP 47 tag, or None when it names none of them.

    A script subtag decides first (zh-Hant-CN is Traditional), then the region. A bare `zh`
    names no script, so it is not taken as either: the spec maps only the tags it lists."""
    parts = tag.lower().split("-")
    if parts[0] == "en":
        return ENGLISH
    if parts[0] != "zh":
        return None
    subtags = parts[1:]
    if "hans" in subtags:
        return SIMPLIFIED
    if "hant" in subtags:
        return TRADITIONAL
    for subtag in subtags:
        if subtag in _SIMPLIFIED_REGIONS:
            return SIMPLIFIED
        if subtag in _TRADITIONAL_REGIONS:
            return TRADITIONAL
    return None


def _quality(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value <= 1 else None


def language_from_accept(header: str | None) -> str:
    """The page language an Accept-Language header asks for: its ranges in order of
    preference, the first that names one of ours; English when none does."""
    ranges: list[tuple[float, int, str]] = []
    for index, item in enumerate((header or "")[:1000].split(",")):
        tag, *params = (part.strip() for part in item.split(";"))
        if not _RANGE.fullmatch(tag):
            continue
        quality: float | None = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                quality = _quality(value.strip())
        if quality is None or quality == 0:
            continue
        ranges.append((-quality, index, tag))
    for _, _, tag in sorted(ranges):
        language = language_of_tag(tag)
        if language is not None:
            return language
    return ENGLISH


def chosen_language(cookie: str | None, accept_language: str | None) -> str:
    """The remembered pick when it is one of ours, else what the browser asks for."""
    if cookie in LANGUAGES:
        return cookie
    return language_from_accept(accept_language)


def catalog_path(locale: str) -> Path:
    return LOCALES_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po"


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The gettext translations of a language, compiled from its .po file once per process."""
    locale = CATALOG_LOCALE.get(language)
    if locale is None:
        return gettext.NullTranslations()
    with catalog_path(locale).open("rb") as handle:
        catalog = read_po(handle, locale=locale, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


def is_script_location(filename: str) -> bool:
    return filename.endswith(".js")


@cache
def script_messages(language: str) -> dict[str, str]:
    """The translated messages the JavaScript modules use, msgid → text, for the page to carry.

    Only the entries that a .js file references are sent; English sends none (the modules'
    msgids are the English text)."""
    locale = CATALOG_LOCALE.get(language)
    if locale is None:
        return {}
    with catalog_path(locale).open("rb") as handle:
        catalog = read_po(handle, locale=locale, domain=DOMAIN)
    messages: dict[str, str] = {}
    for message in catalog:
        if not message.id or message.fuzzy or not isinstance(message.id, str):
            continue
        if any(is_script_location(path) for path, _ in message.locations) and message.string:
            messages[message.id] = str(message.string)
    return messages
