"""Spec §10: the pages people use, served at the root.

The pages are shells: they carry no account data and need no session on the server. The
browser keeps the device bearer token and calls the public API with it, so a page URL never
holds a secret other than the code token the QR itself carries."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from app.state import state_of

HERE = Path(__file__).resolve().parent.parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def _render(request: Request, template: str, page: str, title: str, script: str) -> Response:
    context = {
        "currency": state_of(request).settings.currency,
        "page": page,
        "title": title,
        "script": script,
    }
    response = templates.TemplateResponse(request, template, context)
    # Pages are the same for everyone, but a shared cache must never pair one with a code URL.
    response.headers["Cache-Control"] = "no-store"
    return response


async def home(request: Request) -> Response:
    return _render(request, "home.html", "home", "Home", "home")


async def counter(request: Request) -> Response:
    return _render(request, "counter.html", "counter", "Counter", "counter")


async def code(request: Request) -> Response:
    return _render(request, "pay.html", "code", "Pay", "pay")


async def pay(request: Request) -> Response:
    return _render(request, "pay.html", "pay", "Pay with a code", "pay")


async def dashboard(request: Request) -> Response:
    return _render(request, "dashboard.html", "dashboard", "Dashboard", "dashboard")


routes: list[BaseRoute] = [
    Route("/", home, methods=["GET"]),
    Route("/counter", counter, methods=["GET"]),
    Route("/c/{token}", code, methods=["GET"]),
    Route("/pay", pay, methods=["GET"]),
    Route("/dashboard", dashboard, methods=["GET"]),
    Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
]
