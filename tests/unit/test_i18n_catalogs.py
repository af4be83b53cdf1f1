"""The pages' message catalogs (spec §10): every message of the templates and JavaScript
modules is translated into 简体 and 繁體, no catalog keeps a message nothing uses, translations
keep their placeholders, and neither a template nor a module puts user-facing text on a page
without going through the catalog."""

from __future__ import annotations

import re
import unicodedata
from html.parser import HTMLParser
from pathlib import Path

import pytest

from app import i18n
from app.i18n.extract import APP_DIR, extract, load

TEMPLATES = sorted((APP_DIR / "templates").glob("*.html"))
MODULES = sorted((APP_DIR / "static" / "js").glob("*.js"))
LOCALES = sorted(i18n.CATALOG_LOCALE.values())

BRACE = re.compile(r"\{(\w+)\}")
PERCENT = re.compile(r"%\((\w+)\)s")


def _has_letter(text: str) -> bool:
    return any(unicodedata.category(c).startswith("L") for c in text)


@pytest.fixture(scope="module")
def source_ids() -> dict[str, set[str]]:
    """msgid → the files that use it, freshly extracted from the sources."""
    found: dict[str, set[str]] = {}
    for message in extract():
        if message.id:
            found[str(message.id)] = {path for path, _ in message.locations}
    return found


def test_the_sources_have_messages(source_ids: dict[str, set[str]]) -> None:
    """The extraction finds messages in both the templates and the modules (an extractor that
    silently found nothing would make every other check here pass)."""
    files = set().union(*source_ids.values())
    assert any(f.endswith(".html") for f in files)
    assert any(f.endswith(".js") for f in files)
    assert len(source_ids) > 150


@pytest.mark.parametrize("locale", LOCALES)
def test_catalog_translates_every_message_and_keeps_no_stale_one(
    locale: str, source_ids: dict[str, set[str]]
) -> None:
    """Each .po holds exactly the messages the sources use, each with a non-fuzzy translation
    (a new string without one fails here; `make messages` brings the catalogs in step)."""
    catalog = load(locale)
    entries = {str(m.id): m for m in catalog if m.id}
    missing = sorted(set(source_ids) - set(entries))
    stale = sorted(set(entries) - set(source_ids))
    untranslated = sorted(k for k, m in entries.items() if not m.string or m.fuzzy)
    assert missing == [], f"{locale}: not in the catalog: {missing}"
    assert stale == [], f"{locale}: no longer used: {stale}"
    assert untranslated == [], f"{locale}: untranslated: {untranslated}"


@pytest.mark.parametrize("locale", LOCALES)
def test_translations_keep_their_placeholders(locale: str) -> None:
    """A translation names the same {placeholders} and %(placeholders)s as its msgid, so no
    amount or name is lost or left as a raw brace on the page."""
    for message in load(locale):
        if not message.id:
            continue
        source, text = str(message.id), str(message.string)
        assert set(BRACE.findall(text)) == set(BRACE.findall(source)), (locale, source)
        assert set(PERCENT.findall(text)) == set(PERCENT.findall(source)), (locale, source)


@pytest.mark.parametrize("locale", LOCALES)
def test_catalog_knows_which_messages_the_modules_use(
    locale: str, source_ids: dict[str, set[str]]
) -> None:
    """The page carries the modules' messages by the catalog's source references: they must
    be the modules' messages, all of them and no other."""
    used_by_modules = {
        k for k, files in source_ids.items() if any(f.endswith(".js") for f in files)
    }
    in_catalog = {
        str(m.id)
        for m in load(locale)
        if m.id and any(i18n.is_script_location(path) for path, _ in m.locations)
    }
    assert in_catalog == used_by_modules


def test_pages_carry_the_modules_messages_translated() -> None:
    """script_messages is what a page embeds: every module message, translated, for each
    Chinese page; nothing for English, whose msgids are the text."""
    for language in (i18n.SIMPLIFIED, i18n.TRADITIONAL):
        messages = i18n.script_messages(language)
        assert messages["Received {amount}"] == "收款 {amount}"
        assert all(text and text != "" for text in messages.values())
    assert i18n.script_messages(i18n.ENGLISH) == {}
    assert i18n.script_messages(i18n.SIMPLIFIED)["Revoke"] == "撤销"
    assert i18n.script_messages(i18n.TRADITIONAL)["Revoke"] == "撤銷"


def test_compiled_translations_translate() -> None:
    """The .po files compile at load time with Babel into working gettext catalogs."""
    assert i18n.translations(i18n.SIMPLIFIED).gettext("Devices") == "设备"
    assert i18n.translations(i18n.TRADITIONAL).gettext("Devices") == "裝置"
    assert i18n.translations(i18n.ENGLISH).gettext("Devices") == "Devices"


# ---- the no-literal rule for templates -----------------------------------------------------

# Attributes a person reads or hears (screen readers announce aria-label, alt and title).
READ_ATTRIBUTES = {"alt", "title", "placeholder", "aria-label", "aria-description", "label"}
JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)


class _Literals(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._raw = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._raw += 1
        for name, value in attrs:
            if name in READ_ATTRIBUTES and value and _has_letter(value):
                self.found.append(f'{tag}[{name}="{value}"]')

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._raw -= 1

    def handle_data(self, data: str) -> None:
        if not self._raw and _has_letter(data):
            self.found.append(data.strip())


def template_literals(source: str) -> list[str]:
    """User-facing text in a template that is not a Jinja expression (so no catalog covers it)."""
    parser = _Literals()
    parser.feed(JINJA.sub("", source))
    parser.close()
    return parser.found


def test_the_template_rule_catches_a_literal() -> None:
    """The checker itself: a bare word, a literal alt or aria-label is caught; _() is not."""
    assert template_literals("<p>Hello</p>") == ["Hello"]
    assert template_literals('<img alt="QR code">') == ['img[alt="QR code"]']
    assert template_literals('<nav aria-label="页面"></nav>') == ['nav[aria-label="页面"]']
    assert template_literals('<p>{{ _("Hello") }} 0.00 ✓ —</p><img alt="{{ _(\'x\') }}">') == []


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_templates_hold_no_literal_text(template: Path) -> None:
    """Every word a template shows or names for a screen reader comes through _()."""
    assert template_literals(template.read_text(encoding="utf-8")) == []


# ---- the no-literal rule for the JavaScript modules ----------------------------------------

_STRING = r"(?:\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|`(?:[^`\\]|\\.)*`)"
# The places a module puts text on the page or in a voice: a literal there bypasses t().
_SINK_HEADS = [
    r"\.(?:textContent|innerText|innerHTML|title|placeholder|alt)\s*=\s*",
    r"[{,]\s*(?:text|title|placeholder|alt|\"aria-label\"|\"data-label\"|error)\s*:\s*",
    r"setAttribute\(\s*\"(?:aria-label|title|placeholder|alt)\"\s*,\s*",
    r"\b(?:toast|confirm|alert|SpeechSynthesisUtterance|showAuth)\(\s*",
]
SINKS = [re.compile(head + "(" + _STRING + ")") for head in _SINK_HEADS]
COMMENT = re.compile(r"^\s*//.*$", re.M)
T_CALL = re.compile(r"(?<![\w.$])(?<!function )t\(\s*([^)\s])")
# An interpolation, or one cut short by a nested template literal the string pattern stops at.
INTERPOLATION = re.compile(r"\$\{[^}]*(?:\}|$)")


def module_literals(source: str) -> list[str]:
    """Literal strings with words in them passed straight to a text sink of the page."""
    code = COMMENT.sub("", source)
    found = []
    for sink in SINKS:
        for match in sink.finditer(code):
            literal = match.group(1)
            if _has_letter(INTERPOLATION.sub("", literal[1:-1])):
                found.append(literal)
    return found


def test_the_module_rule_catches_a_literal() -> None:
    """The checker itself: literals in textContent, text:, aria-label and toast are
    caught; t() calls and interpolation-only template strings are not."""
    assert module_literals('node.textContent = "Paid";') == ['"Paid"']
    assert module_literals('el("b", { text: `Item ${i}` })') == ["`Item ${i}`"]
    assert module_literals('el("b", { "aria-label": "Remove" })') == ['"Remove"']
    assert module_literals("toast(`Refunded ${x}.`);") == ["`Refunded ${x}.`"]
    assert module_literals('x.textContent = "yes" + t("no");') == ['"yes"']
    assert module_literals('x.textContent = t("Paid"); el("b", { text: `${a} (@${b})` });') == []


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_modules_put_no_literal_text_on_the_page(module: Path) -> None:
    """Every word a module writes into the page (text, labels, errors, toasts, speech) comes
    from t(), i.e. from the catalog."""
    assert module_literals(module.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_modules_call_t_with_a_literal(module: Path) -> None:
    """t() takes a literal msgid: a computed one would escape extraction and the catalog."""
    for match in T_CALL.finditer(COMMENT.sub("", module.read_text(encoding="utf-8"))):
        assert match.group(1) in "\"'", f"{module.name}: t() called with a non-literal"
