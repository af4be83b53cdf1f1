"""Spec §9 at the root: /healthz (the process answers), /readyz (it can serve), /metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import observability
from app.errors import error_body
from app.http import in_thread
from app.state import AppState, state_of
from models.db import Database

log = logging.getLogger("paycode.ops")

CHECK_TIMEOUT = 2.0


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _select_one(db: Database) -> None:
    with db.reader.connect() as conn:
        conn.exec_driver_sql("SELECT 1")


async def check_database(state: AppState) -> None:
    await asyncio.wait_for(in_thread(_select_one, state.db), CHECK_TIMEOUT)


async def _redis_ping(url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def check_broker(state: AppState) -> None:
    """The hub's own ping when it has one (it knows the connection it really uses); otherwise
    a PING to the configured Redis. The memory broker lives in this process: always there."""
    ping: Callable[[], Awaitable[Any]] | None = getattr(state.hub, "ping", None)
    if ping is not None:
        await asyncio.wait_for(ping(), CHECK_TIMEOUT)
    elif state.settings.broker_scheme in ("redis", "rediss"):
        await asyncio.wait_for(_redis_ping(state.settings.broker_url), CHECK_TIMEOUT)


async def readyz(request: Request) -> Response:
    state = state_of(request)
    checks: dict[str, str] = {}
    failed: list[str] = []
    for name, check in (("database", check_database), ("broker", check_broker)):
        try:
            await check(state)
            checks[name] = "ok"
        except Exception as exc:
            # The class name only: driver messages can carry hosts, users or passwords.
            checks[name] = f"unreachable: {exc.__class__.__name__}"
            failed.append(name)
            log.warning("readiness check failed", extra={"check": name, "error": checks[name]})
    if failed:
        body = error_body("unavailable", f"{' and '.join(failed)} unreachable")
        response = JSONResponse({**body, "checks": checks}, status_code=503)
        response.headers["Retry-After"] = "1"
        return response
    return JSONResponse({"status": "ready", "checks": checks})


async def metrics(_request: Request) -> Response:
    payload, content_type = await in_thread(observability.metrics_text)
    return Response(payload, media_type=content_type)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
