"""Spec §10: the pages people use, served at the root, in the language each browser asks for.

The pages are shells: they carry no account data and need no session on the server. The
browser keeps the device bearer token and calls the public API with it, so a page URL never
holds a secret other than the code token the QR itself carries. Each page is rendered in the
language of app.i18n.chosen_language and carries the messages its modules need."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from babel.numbers import get_currency_symbol
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from app import i18n
from app.state import state_of
from models.webhooks import EVENT_TYPES

HERE = Path(__file__).resolve().parent.parent
BRAND = "paycode"  # the product's name, the same in every language


@cache
def templates_for(language: str) -> Jinja2Templates:
    """One template environment per language, its gettext installed once: rendering then
    never switches a shared environment between requests."""
    env = Environment(
        loader=FileSystemLoader(str(HERE / "templates")),
        autoescape=select_autoescape(),
        extensions=["jinja2.ext.i18n"],
    )
    # The catalog block in each page: UTF-8 text is half the size of \u escapes.
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "sort_keys": True}
    env.install_gettext_translations(i18n.translations(language), newstyle=True)  # type: ignore[attr-defined]
    return Jinja2Templates(env=env)


def currency_sign(currency: str, language: str) -> str:
    """The currency's sign as the language writes it (¥, CN¥); a bare "$", which does not say
    which dollar (繁體 writes TWD so), becomes the English sign: NT$, HK$. As money.js does."""
    sign = get_currency_symbol(currency, locale=language.replace("-", "_"))
    return get_currency_symbol(currency, locale="en") if sign == "$" else sign


def _render(request: Request, template: str, page: str, script: str, **extra: object) -> Response:
    language = i18n.chosen_language(
        request.cookies.get(i18n.COOKIE), request.headers.get("accept-language")
    )
    currency = state_of(request).settings.currency
    context = {
        "lang": language,
        "languages": list(i18n.AUTONYMS.items()),
        "lang_cookie": i18n.COOKIE,
        "brand": BRAND,
        "currency": currency,
        "currency_symbol": currency_sign(currency, language),
        "page": page,
        "script": script,
        "script_messages": i18n.script_messages(language),
        **extra,
    }
    response = templates_for(language).TemplateResponse(request, template, context)
    # Pages are the same for everyone, but a shared cache must never pair one with a code URL.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Language"] = language
    response.headers["Vary"] = "Accept-Language, Cookie"
    return response


async def home(request: Request) -> Response:
    return _render(request, "home.html", "home", "home")


async def counter(request: Request) -> Response:
    return _render(request, "counter.html", "counter", "counter")


async def code(request: Request) -> Response:
    return _render(request, "pay.html", "code", "pay")


async def pay(request: Request) -> Response:
    return _render(request, "pay.html", "pay", "pay")


async def dashboard(request: Request) -> Response:
    # The event types an endpoint may subscribe to, from the one list the API checks against.
    return _render(request, "dashboard.html", "dashboard", "dashboard", webhook_events=EVENT_TYPES)


async def devices(request: Request) -> Response:
    return _render(request, "devices.html", "devices", "devices")


routes: list[BaseRoute] = [
    Route("/", home, methods=["GET"]),
    Route("/counter", counter, methods=["GET"]),
    Route("/c/{token}", code, methods=["GET"]),
    Route("/pay", pay, methods=["GET"]),
    Route("/dashboard", dashboard, methods=["GET"]),
    Route("/devices", devices, methods=["GET"]),
    Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
]
