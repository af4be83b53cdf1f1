"""``paycode webhooks``: the delivery worker in a process of its own.

A ``paycode serve`` process sends webhooks on its own event loop, beside the API. Under heavy
payment traffic that loop is the bottleneck, so a deployment can set
``PAYCODE_WEBHOOK_WORKER=off`` on its servers and run this instead (one or several: leases
make any number safe together). It needs the database only; the ``webhook.disabled`` event it
may write reaches WebSockets through each server's outbox relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal

from app.settings import Settings
from app.webhooks.worker import WebhookWorker, WorkerConfig
from models import migrate
from models.db import Database

log = logging.getLogger("paycode.webhooks")
PROCESS_INTERVAL = 0.05


async def _serve(settings: Settings) -> None:
    db = Database(settings.database_url, own_checkpoints=True)
    config = dataclasses.replace(WorkerConfig.from_settings(settings), passes_on_loop=True)
    if "webhook_interval" not in settings.extra:
        # No commit of its own wakes this process: it looks for new events often instead (an
        # idle look is one indexed read).
        config = dataclasses.replace(config, interval=PROCESS_INTERVAL)
    worker = WebhookWorker(db, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker.start()
    try:
        await stop.wait()
    finally:
        await worker.stop()
        db.dispose()


def run(settings: Settings, *, metrics_port: int | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    migrate.upgrade(settings.database_url)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings))
    return 0
