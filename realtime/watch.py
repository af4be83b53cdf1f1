"""``paycode watch HANDLE``: a terminal live feed of one account's events, over HTTP and the
WebSocket only (it works against any running server, local or remote)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from realtime.client import Event, LiveClient, Unauthorized


class WatchError(Exception):
    """Login or connection failed; the message says why."""


def _call(base_url: str, method: str, path: str, body: Any, token: str | None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base_url.rstrip('/')}/api/v1{path}", data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())["error"]
            detail = f"{error['code']}: {error['message']}"
        except Exception:
            detail = str(exc)
        raise WatchError(f"{method} {path} failed ({exc.code} {detail})") from exc
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        raise WatchError(f"cannot reach {base_url}: {exc}") from exc
    return json.loads(raw) if raw else None


def log_in(base_url: str, handle: str, password: str) -> str:
    """A fresh device token for this watcher (each login is a device, spec §3)."""
    body = {"handle": handle, "password": password, "device_name": "paycode watch"}
    return str(_call(base_url, "POST", "/sessions", body, None)["token"])


def log_out(base_url: str, token: str) -> None:
    _call(base_url, "DELETE", "/sessions/current", None, token)


def describe(event: Event) -> str:
    """One line a clerk can read: seq, type, and the amount and parties where there are some."""
    data = event.data
    parts = [f"#{event.seq:<5}", event.created_at, f"{event.type:<18}"]
    amount = data.get("amount")
    if isinstance(amount, int):
        currency = data.get("currency", "")
        parts.append(f"{amount // 100}.{amount % 100:02d} {currency}".strip())
    for role in ("payer", "payee", "agent"):
        party = data.get(role)
        if isinstance(party, dict) and party.get("handle"):
            parts.append(f"{role}={party['handle']}")
    if isinstance(data.get("label"), str) and data.get("label"):
        parts.append(f"label={data['label']!r}")
    if data.get("code_label"):
        parts.append(f"code={data['code_label']!r}")
    return "  ".join(parts)


async def watch(
    base_url: str,
    token: str,
    *,
    after: int | None,
    out: Callable[[str], None] = print,
    limit: int | None = None,
) -> int:
    """Print events until interrupted (or `limit` events, for scripts and tests)."""
    seen = 0
    async with LiveClient(base_url, token, after=after) as live:
        try:
            async for event in live:
                out(describe(event))
                seen += 1
                if limit is not None and seen >= limit:
                    break
        except Unauthorized as exc:
            raise WatchError("the token was refused (revoked or logged out)") from exc
    return seen


def run(
    base_url: str, handle: str, *, password: str | None, token: str | None, after: int | None
) -> int:
    """The CLI entry: log in if no token is given, watch, and log the device out again."""
    own_login = token is None
    if token is None:
        if password is None:
            import getpass

            password = getpass.getpass(f"password for {handle}: ")
        token = log_in(base_url, handle, password)
    print(f"watching {handle} at {base_url} (Ctrl-C to stop)", flush=True)
    try:
        asyncio.run(watch(base_url, token, after=after, out=lambda line: print(line, flush=True)))
    except KeyboardInterrupt:
        pass
    finally:
        if own_login:
            with contextlib.suppress(WatchError):
                log_out(base_url, token)
    return 0
