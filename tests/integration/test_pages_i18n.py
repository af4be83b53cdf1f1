"""The pages rendered in each language (spec §10): <html lang>, the language chosen by
Accept-Language or the remembered cookie, every template text translated, the modules'
messages carried in the page, and money labels in the locale's currency sign."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.main import create_app
from app.routes.pages import currency_sign
from app.settings import Settings

PAGES = ["/", "/counter", "/c/some-token", "/pay", "/dashboard", "/devices"]
LATIN_WORD = re.compile(r"[A-Za-z]{3,}")


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app whose pages are rendered; they read no data, so one SQLite database serves."""
    database = Path(tmp_path_factory.mktemp("pages")) / "pages.db"
    settings = Settings(database_url=f"sqlite:///{database}", public_url_setting="http://t")
    with TestClient(create_app(settings)) as client:
        yield client


def visible_text(html: str) -> str:
    """The page's text and read attributes, without scripts, styles, the catalog block, the
    language picker's own names (each shown in its own language) and the product name."""
    html = re.sub(r"<script.*?</script>|<style.*?</style>", " ", html, flags=re.S)
    html = re.sub(r"<select id=\"lang\".*?</select>", " ", html, flags=re.S)
    attributes = " ".join(re.findall(r'(?:aria-label|alt|title|placeholder)="([^"]*)"', html))
    text = re.sub(r"<[^>]+>", " ", html)
    return f"{text} {attributes}".replace("paycode", " ")


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize(
    ("accept", "lang", "sample"),
    [("zh-CN,zh;q=0.9", "zh-CN", "付款"), ("zh-HK", "zh-TW", "付款"), ("en-US", "en", "Pay")],
)
def test_each_page_is_in_the_browsers_language(
    pages: TestClient, path: str, accept: str, lang: str, sample: str
) -> None:
    """Every page answers in the language Accept-Language chooses, with <html lang> set, and a
    Chinese page has no English word left in its template text or accessible names."""
    response = pages.get(path, headers={"Accept-Language": accept})
    assert response.status_code == 200
    assert f'<html lang="{lang}">' in response.text
    assert response.headers["content-language"] == lang
    assert "Accept-Language" in response.headers["vary"]
    assert sample in response.text
    if lang != "en":
        words = LATIN_WORD.findall(visible_text(response.text))
        # /pay and the short-code example are code, not words.
        assert [w for w in words if w not in {"pay", "CSV", "QXD"}] == [], words


def test_the_remembered_pick_overrides_the_browser(pages: TestClient) -> None:
    """The paycode_lang cookie (set by the picker) decides over Accept-Language; an unknown
    value falls back to the browser's."""
    pages.cookies.set("paycode_lang", "zh-TW")
    try:
        response = pages.get("/counter", headers={"Accept-Language": "en-US"})
        assert '<html lang="zh-TW">' in response.text
        assert "收銀台" in response.text
        pages.cookies.set("paycode_lang", "xx")
        response = pages.get("/counter", headers={"Accept-Language": "zh-SG"})
        assert '<html lang="zh-CN">' in response.text
        assert "收银台" in response.text
    finally:
        pages.cookies.clear()


def test_a_page_carries_its_modules_messages(pages: TestClient) -> None:
    """The JSON block holds the modules' messages from the same catalog; English carries none."""
    block = re.compile(r'<script type="application/json" id="i18n-messages">(.*?)</script>', re.S)
    zh = pages.get("/counter", headers={"Accept-Language": "zh-TW"}).text
    messages = json.loads(block.search(zh).group(1))  # type: ignore[union-attr]
    assert messages["Received {amount}"] == "收款 {amount}"
    assert messages["{number} yuan"] == "{number} 元"
    en = pages.get("/counter", headers={"Accept-Language": "en"}).text
    assert json.loads(block.search(en).group(1)) == {}  # type: ignore[union-attr]


def test_money_labels_use_the_locales_currency_sign(pages: TestClient) -> None:
    """Labels name the deployment currency as the locale writes it (¥ in 简体), not as a code."""
    zh = pages.get("/counter", headers={"Accept-Language": "zh-CN"}).text
    assert "（¥，无商品时填写）" in zh
    en = pages.get("/dashboard", headers={"Accept-Language": "en"}).text
    assert "Amount (CN¥)" in en


def test_a_dollar_sign_says_which_dollar() -> None:
    """繁體 writes TWD with a bare "$"; the labels say NT$ (and HK$), as the pages' money does."""
    assert currency_sign("TWD", "zh-TW") == "NT$"
    assert currency_sign("HKD", "zh-TW") == "HK$"
    assert currency_sign("CNY", "zh-CN") == "¥"
    assert currency_sign("CNY", "zh-TW") == "CN¥"
    assert currency_sign("USD", "en") == "$"
