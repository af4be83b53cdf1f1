"""create_app(): the routes list, the exception handlers and the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount

from app import errors, gc_policy, observability, openapi
from app.admission import Admission
from app.http import in_thread
from app.purge import Purge
from app.relay import Relay
from app.routes import accounts as accounts_routes
from app.routes import admin as admin_routes
from app.routes import agencies as agencies_routes
from app.routes import codes as codes_routes
from app.routes import events as events_routes
from app.routes import ops as ops_routes
from app.routes import pages as pages_routes
from app.routes import payments as payments_routes
from app.routes import receipts as receipts_routes
from app.routes import reports as reports_routes
from app.routes import webhooks as webhooks_routes
from app.routes import ws as ws_routes
from app.security_headers import security_headers
from app.services import payments as payments_service
from app.settings import Settings, from_env
from app.state import AppState
from app.tokens import TokenCache
from app.webhooks.nudge import Nudger
from app.webhooks.worker import WebhookWorker, WorkerConfig
from models import errors as domain_errors
from models import migrate
from models.db import Database
from realtime.hub import Hub

log = logging.getLogger("paycode")


async def database_unavailable(_request: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", exc.__class__.__name__)
    response = errors.error_response(
        503, "unavailable", "the database is unavailable; retry with the same Idempotency-Key"
    )
    response.headers["Retry-After"] = "1"
    return response


async def concurrent_conflict(_request: Request, exc: Exception) -> Response:
    # A unique key lost a race the service's own checks could not see coming.
    log.info("integrity conflict: %s", exc.__class__.__name__)
    return errors.error_response(409, "conflict", "a concurrent request changed this; retry")


def api_routes() -> list[BaseRoute]:
    # The sale's routes first: a request is matched against the routes in order, and no path
    # of the others overlaps theirs.
    return [
        *payments_routes.routes,
        *codes_routes.routes,
        *accounts_routes.routes,
        *admin_routes.routes,
        *agencies_routes.routes,
        *reports_routes.routes,
        *events_routes.routes,
        *receipts_routes.routes,
        *webhooks_routes.routes,
    ]


def create_app(settings: Settings | None = None, *, migrate_schema: bool = True) -> Starlette:
    settings = (settings or from_env()).validate()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if migrate_schema:
            await in_thread(migrate.upgrade, settings.database_url)
        observability.forget_dead_workers()
        db = Database(
            settings.database_url,
            pool_size=int(settings.extra.get("pool_size", 8)),
            pool_timeout=settings.extra.get("pool_timeout"),
            own_checkpoints=True,
        )
        hub = Hub(
            settings.broker_url,
            queue_limit=int(settings.extra.get("ws_queue_limit", 256)),
            hooks=observability.REALTIME_HOOKS,
        )
        await hub.start()
        tokens = TokenCache()
        hub.revocation_listeners.append(tokens.forget_device)
        interval = float(settings.extra.get("relay_interval", 0.5))
        relay = Relay(db, hub, interval=interval, tokens=tokens)
        relay.start()
        purger = Purge(db, interval=settings.purge_interval)
        if settings.purge_interval > 0:
            purger.start()
        admission = Admission(db.write_slots, settings.admission_budget_ms / 1000)
        lag_watch = asyncio.create_task(admission.watch_loop(), name="paycode-loop-lag")
        app.state.paycode = AppState(
            settings=settings, db=db, hub=hub, admission=admission, tokens=tokens
        )
        # The receipt signing key exists from the first start, not the first payment.
        await in_thread(payments_service.prepare, app.state.paycode)
        webhooks = WebhookWorker(
            db, WorkerConfig.from_settings(settings), app.state.paycode.publish
        )
        nudger = None
        if settings.webhook_worker:
            webhooks.start()
            app.state.paycode.on_publish.append(webhooks.nudge)
            app.state.webhooks = webhooks
        elif settings.webhook_sender_nudge is not None:
            nudger = Nudger(settings.webhook_sender_nudge)
            app.state.paycode.on_publish.append(nudger)
        try:
            yield
        finally:
            await webhooks.stop()
            if nudger is not None:
                nudger.close()
            # uvicorn has already closed this process's WebSockets with 1012 by now.
            lag_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag_watch
            await purger.stop()
            await relay.stop()
            await hub.stop()
            await db.dispose_loop_engine()
            db.dispose()
            observability.process_exiting()

    return Starlette(
        routes=[
            # Routed before the mount, not through it: every idle socket keeps the frames of
            # the routers it passed, and a second router level is memory per socket.
            *ws_routes.routes,
            Mount("/api/v1", routes=api_routes()),
            *ops_routes.routes,
            *openapi.routes,
            *pages_routes.routes,
        ],
        # One pure-ASGI layer: request id, metrics, security headers, and the guard (refusals
        # before routing; unexpected exceptions never reach the server).
        middleware=[
            Middleware(
                observability.ObservabilityMiddleware, extra_headers=security_headers, guard=True
            ),
        ],
        exception_handlers={
            domain_errors.DomainError: errors.domain_error_handler,
            HTTPException: errors.http_error_handler,
            OperationalError: database_unavailable,
            InterfaceError: database_unavailable,
            # Every pooled connection stayed busy for the pool's whole timeout: overloaded.
            PoolTimeout: database_unavailable,
            IntegrityError: concurrent_conflict,
        },
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    """Factory for uvicorn workers: settings come from the environment set by ``paycode serve``.
    The process serves from here on, so its collector is settled for serving."""
    app = create_app(migrate_schema=False)
    gc_policy.settle()
    return app
