"""The messages the pages use, read from their sources with Babel's extractors, and the
catalogs brought in step with them.

`python -m app.i18n.extract` (or `make messages`) rewrites app/locales/messages.pot and merges it
into each language's .po: new messages arrive untranslated, vanished ones are dropped. The unit
tests run the same extraction, so a template or module string that no catalog translates fails
them."""

from __future__ import annotations

import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

from app.i18n import CATALOG_LOCALE, DOMAIN, LOCALES_DIR, catalog_path

APP_DIR = LOCALES_DIR.parent
ROOT = APP_DIR.parent
TEMPLATE = LOCALES_DIR / f"{DOMAIN}.pot"

# Templates call _() through Jinja's i18n extension; the modules call t() from i18n.js.
METHOD_MAP = [
    ("templates/**.html", "jinja2.ext:babel_extract"),
    ("static/js/**.js", "javascript"),
]
# A t() inside a template literal's ${} counts too.
OPTIONS_MAP = {"static/js/**.js": {"parse_template_string": "true"}}
KEYWORDS = {"_": None, "gettext": None, "t": None}


def extract() -> Catalog:
    """Every message of the templates and the JavaScript modules, with where each is used."""
    catalog = Catalog(project="paycode", domain=DOMAIN, charset="utf-8", fuzzy=False)
    for filename, lineno, message, comments, _context in extract_from_dir(
        APP_DIR,
        METHOD_MAP,
        options_map=OPTIONS_MAP,
        keywords=KEYWORDS,
        comment_tags=("i18n:",),
        strip_comment_tags=True,
    ):
        path = f"app/{Path(filename).as_posix()}"
        catalog.add(message, None, [(path, lineno)], auto_comments=comments)
    return catalog


def load(locale: str) -> Catalog:
    with catalog_path(locale).open("rb") as handle:
        return read_po(handle, locale=locale, domain=DOMAIN)


def _write(catalog: Catalog, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        write_po(handle, catalog, width=100, sort_output=True, omit_header=False)


def update() -> None:
    template = extract()
    _write(template, TEMPLATE)
    for locale in CATALOG_LOCALE.values():
        path = catalog_path(locale)
        catalog = load(locale) if path.exists() else Catalog(locale=locale, domain=DOMAIN)
        catalog.update(template, no_fuzzy_matching=True)
        catalog.obsolete.clear()
        _write(catalog, path)


def main() -> int:
    update()
    missing = {
        locale: [m.id for m in load(locale) if m.id and (not m.string or m.fuzzy)]
        for locale in CATALOG_LOCALE.values()
    }
    for locale, ids in missing.items():
        for msgid in ids:
            print(f"{locale}: untranslated: {msgid!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
