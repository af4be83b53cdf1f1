"""``paycode webhooks``: the delivery worker in a process of its own.

``paycode serve`` starts one beside its workers by default (app/webhooks/supervisor.py, with
``--parent-pid``: it exits when that server is gone, and ``--nudge-socket``: the server's
workers tell it there of their commits). A deployment may instead set
``PAYCODE_WEBHOOK_WORKER=off`` on its servers and run any number of these itself: leases make
them safe together. It needs the database only; the ``webhook.disabled`` event it may write
reaches WebSockets through each server's outbox relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import logging.config
import os
import signal

from app import observability
from app.settings import Settings
from app.webhooks.nudge import Listener
from app.webhooks.worker import WebhookWorker, WorkerConfig
from models import migrate
from models.db import Database

log = logging.getLogger("paycode.webhooks")
PROCESS_INTERVAL = 0.05
# Told of its server's commits, a sender looks on its own only for other processes' (the CLI's).
NUDGED_INTERVAL = 0.25
PARENT_POLL = 1.0


async def _orphaned(parent_pid: int) -> None:
    """Returns once ``parent_pid`` is no longer this process's parent: it died, even by
    SIGKILL, which leaves it no chance to stop us."""
    # Polled: no event tells a process that its parent died.
    while True:
        if os.getppid() != parent_pid:
            return
        await asyncio.sleep(PARENT_POLL)


def _listen(path: str) -> Listener | None:
    try:
        return Listener(path, wake=lambda: None)
    except OSError as exc:
        log.warning(
            "not told of the server's commits (%s): looking every %s s", exc, PROCESS_INTERVAL
        )
        return None


async def _serve(settings: Settings, parent_pid: int | None, nudge_socket: str | None) -> None:
    # What it writes is the queue's: on SQLite a file of its own, whose log it checkpoints;
    # the database's own log is its servers' to checkpoint.
    db = Database(settings.database_url, own_queue_checkpoints=True)
    config = dataclasses.replace(WorkerConfig.from_settings(settings), passes_on_loop=True)
    listener = _listen(nudge_socket) if nudge_socket is not None else None
    if "webhook_interval" not in settings.extra:
        # No commit of its own wakes this process: unless told of its server's, it looks for
        # new events often instead (an idle look is one indexed read).
        interval = PROCESS_INTERVAL if listener is None else NUDGED_INTERVAL
        config = dataclasses.replace(config, interval=interval)
    worker = WebhookWorker(db, config)
    if listener is not None:
        listener.wake = worker.nudge
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker.start()
    waits = [asyncio.create_task(stop.wait())]
    if parent_pid is not None:
        waits.append(asyncio.create_task(_orphaned(parent_pid)))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
        if listener is not None:
            listener.close()
        await worker.stop()
        db.dispose()
    if parent_pid is not None and nudge_socket is not None and not stop.is_set():
        # Orphaned: the server that made the socket's directory for this process died
        # without removing it (SIGKILL), so it is this process's to remove. Only if empty.
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(nudge_socket))


def run(
    settings: Settings,
    *,
    metrics_port: int | None = None,
    parent_pid: int | None = None,
    nudge_socket: str | None = None,
) -> int:
    # The server's JSON lines, so that a server and the sender it starts log alike.
    logging.config.dictConfig(
        observability.log_config(os.environ.get("PAYCODE_LOG_LEVEL", "info").lower())
    )
    migrate.upgrade(settings.database_url)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, parent_pid, nudge_socket))
    return 0
