"""Security headers on every HTTP response (pure ASGI, so streaming bodies pass untouched).

The Content-Security-Policy forbids inline script and inline style: every page loads its code
from /static, so an injected <script> or on* attribute cannot run. Referrer-Policy no-referrer
keeps the /c/{token} URL (a bearer of the code) out of the Referer of anything the page loads.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_SAFE_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


_CSP_HEAD = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:"
_CSP_TAIL = (
    "font-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
_FIXED = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
# Hosts seen so far and their header lists: a deployment answers to a handful of names, and a
# client inventing Host values only fills the cache to its bound, then pays the plain price.
_CACHE_LIMIT = 256
_by_host: dict[str | None, list[tuple[bytes, bytes]]] = {}


def content_security_policy(host: str | None) -> str:
    # 'self' covers same-origin ws/wss in current browsers; naming them keeps older ones working.
    sockets = ""
    if host and _SAFE_HOST.fullmatch(host):
        sockets = f" ws://{host} wss://{host}"
    return f"{_CSP_HEAD}; connect-src 'self'{sockets}; {_CSP_TAIL}"


def security_headers(host: str | None) -> list[tuple[bytes, bytes]]:
    cached = _by_host.get(host)
    if cached is not None:
        return cached
    headers = [
        (b"content-security-policy", content_security_policy(host).encode("latin-1")),
        *_FIXED,
    ]
    if len(_by_host) < _CACHE_LIMIT:
        _by_host[host] = headers
    return headers


class SecurityHeaders:
    """Adds the headers above to every HTTP response that does not already set them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = None
        for name, value in scope.get("headers", ()):
            if name == b"host":
                host = value.decode("latin-1")
                break
        extra = security_headers(host)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(pair for pair in extra if pair[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
