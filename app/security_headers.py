"""Security headers on every HTTP response. ``ObservabilityMiddleware`` adds them (unless the
response sets its own) in the same ``send`` wrapper as X-Request-ID, so a request pays for one
wrapper, not two; streaming bodies pass untouched.

The Content-Security-Policy forbids inline script and inline style: every page loads its code
from /static, so an injected <script> or on* attribute cannot run. Referrer-Policy no-referrer
keeps the /c/{token} URL (a bearer of the code) out of the Referer of anything the page loads.
"""

from __future__ import annotations

import re

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
