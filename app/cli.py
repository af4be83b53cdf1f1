"""The ``paycode`` command: serve, demo, deposit, migrate, verify, watch, webhooks."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from app.settings import Settings, SettingsError, from_env

if TYPE_CHECKING:
    import uvicorn

    from app.webhooks.supervisor import SenderProcess

SETTING_FLAGS = {
    "database_url": "PAYCODE_DATABASE_URL",
    "broker_url": "PAYCODE_BROKER_URL",
    "public_url": "PAYCODE_PUBLIC_URL",
    "currency": "PAYCODE_CURRENCY",
    "admin_token": "PAYCODE_ADMIN_TOKEN",
}


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name, env in SETTING_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"overrides {env}")


def settings_from(args: argparse.Namespace) -> Settings:
    """Environment first, then flags on top; flags are also written back to the environment so
    worker processes started by uvicorn see the same settings."""
    for name, env in SETTING_FLAGS.items():
        value = getattr(args, name, None)
        if value is not None:
            os.environ[env] = value
    settings = from_env()
    overrides = {k: getattr(args, k, None) for k in ("host", "port", "workers")}
    return settings.with_overrides(**overrides).validate()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app import reuse_port
    from models import migrate

    settings = settings_from(args)
    if settings.public_url_setting is None:
        os.environ["PAYCODE_PUBLIC_URL"] = settings.public_url
    migrate.upgrade(settings.database_url)
    if args.demo:
        from app.demo import seed_and_print

        seed_and_print(settings)
    from app import observability
    from app.http_limits import BoundedHeadProtocol
    from realtime.protocol import MAX_FRAME

    # Workers are spawned afresh and read this directory from the environment at import.
    metrics_dir = observability.prepare_multiprocess_dir(settings.workers)
    sender = _start_sender() if settings.webhook_sender_process else None
    log_level = os.environ.get("PAYCODE_LOG_LEVEL", "info").lower()
    # One process: once shut down, uvicorn raises again the SIGTERM that stopped it, and
    # SIGTERM's default action would end the process before the cleanup below.
    signal.signal(signal.SIGTERM, _terminated)
    stopped_by: int | None = None
    options = {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "ws_per_message_deflate": False,
        # httptools has no cap on a request's head; this one answers 431 past 32 KiB.
        "http": BoundedHeadProtocol,
        # A larger client frame is refused by the WebSocket layer with 1009 before it is
        # buffered whole (uvicorn's default would hold up to 16 MiB per socket).
        "ws_max_size": MAX_FRAME,
        # SIGTERM: stop accepting, close WebSockets with 1012, let requests finish, exit.
        "timeout_graceful_shutdown": 10,
        "log_level": log_level,
        "log_config": observability.log_config(log_level),
        "access_log": False,
    }
    try:
        if settings.workers > 1 and reuse_port.supported():
            _serve_workers(uvicorn.Config(APP, **options))
        else:
            uvicorn.run(APP, **options)
    except _Terminated as stop:
        stopped_by = stop.signum
    finally:
        if sender is not None:
            sender.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if stopped_by is not None:
        # Ended by the signal, as uvicorn means it to, now that nothing is left behind.
        signal.signal(stopped_by, signal.SIG_DFL)
        signal.raise_signal(stopped_by)
    return 0


APP = "app.main:app_from_env"


def _serve_workers(config: uvicorn.Config) -> None:
    """uvicorn's supervisor over workers that each listen on a socket of their own
    (app/reuse_port.py)."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from app import reuse_port

    try:
        reuse_port.check_free(config.host, config.port)
    except OSError as exc:
        print(f"paycode: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        raise SystemExit(STARTUP_FAILURE) from exc
    listener = reuse_port.Listener(config.host, config.port)
    Multiprocess(config, sockets=[listener]).run()  # type: ignore[list-item]


class _Terminated(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminated(signum: int, _frame: object) -> None:
    raise _Terminated(signum)


def _start_sender() -> SenderProcess:
    """The webhook sender beside the workers (app/webhooks/supervisor.py); the workers, which
    read their settings from the environment, then send none themselves."""
    from app import observability
    from app.webhooks.nudge import NUDGE_ENV
    from app.webhooks.supervisor import SenderProcess

    # Several workers share a metrics directory, which the sender writes into too.
    sender = SenderProcess(dict(os.environ), own_metrics=observability.multiprocess_dir() is None)
    sender.start()
    os.environ["PAYCODE_WEBHOOK_WORKER"] = "off"
    os.environ[NUDGE_ENV] = sender.nudge_path
    return sender


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import seed_and_print
    from models import migrate

    settings = settings_from(args)
    migrate.upgrade(settings.database_url)
    seed_and_print(settings)
    return 0


def cmd_deposit(args: argparse.Namespace) -> int:
    from app.services.deposits import deposit_now

    settings = settings_from(args)
    try:
        amount = int(args.amount)
    except ValueError:
        print("AMOUNT must be an integer number of minor units (1250 = 12.50)", file=sys.stderr)
        return 2
    view = deposit_now(settings, args.handle, amount)
    print(f"deposited {view['amount']} {view['currency']} minor units to {view['handle']}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from models import migrate

    settings = settings_from(args)
    if args.downgrade:
        migrate.downgrade(settings.database_url, args.revision or "base")
    else:
        migrate.upgrade(settings.database_url, args.revision or "head")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from models.verify import check_database

    settings = settings_from(args)
    problems = check_database(settings.database_url)
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        print(f"paycode verify: the books are wrong ({len(problems)} problems)", file=sys.stderr)
        return 1
    print("ok: ledger balanced, balances match the ledger, money conserved, events gapless")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from models import purge
    from models.db import Database

    settings = settings_from(args)
    db = Database(settings.database_url, pool_size=1)
    try:
        removed = purge.purge(db)
    finally:
        db.dispose()
    if removed is None:
        print("another process is purging now; nothing removed here")
        return 0
    print(
        "removed "
        + ", ".join(f"{count} {table} rows" for table, count in removed.items())
        + " past their windows"
    )
    return 0


def cmd_rotate_receipt_key(args: argparse.Namespace) -> int:
    from app.services.payments import rotate_receipt_key_now

    key = rotate_receipt_key_now(settings_from(args))
    print(f"new receipt signing key {key['key_id']}; older keys still verify their receipts")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from realtime.watch import WatchError, run

    base_url = args.url or os.environ.get("PAYCODE_PUBLIC_URL") or "http://127.0.0.1:8000"
    try:
        return run(
            base_url, args.handle, password=args.password, token=args.token, after=args.after
        )
    except WatchError as exc:
        print(f"paycode watch: {exc}", file=sys.stderr)
        return 1


def cmd_webhooks(args: argparse.Namespace) -> int:
    from app.webhooks.process import run

    return run(
        settings_from(args),
        metrics_port=args.metrics_port,
        parent_pid=args.parent_pid,
        nudge_socket=args.nudge_socket,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paycode", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP and WebSocket server")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=None)
    serve.add_argument("--demo", action="store_true", help="seed the demo accounts first")
    _add_setting_flags(serve)
    serve.set_defaults(handler=cmd_serve)

    demo = commands.add_parser("demo", help="seed a shop owner, two clerks and a customer")
    demo.add_argument("--host", default=None)
    demo.add_argument("--port", type=int, default=None)
    _add_setting_flags(demo)
    demo.set_defaults(handler=cmd_demo)

    deposit = commands.add_parser("deposit", help="fund an account (minor units)")
    deposit.add_argument("handle")
    deposit.add_argument("amount")
    _add_setting_flags(deposit)
    deposit.set_defaults(handler=cmd_deposit)

    mig = commands.add_parser("migrate", help="apply the database migrations")
    mig.add_argument("--revision", default=None)
    mig.add_argument("--downgrade", action="store_true")
    _add_setting_flags(mig)
    mig.set_defaults(handler=cmd_migrate)

    verify = commands.add_parser("verify", help="check the books; non-zero exit if wrong")
    _add_setting_flags(verify)
    verify.set_defaults(handler=cmd_verify)

    purge = commands.add_parser(
        "purge", help="remove expired Idempotency-Key records and limiter rows now"
    )
    _add_setting_flags(purge)
    purge.set_defaults(handler=cmd_purge)

    rotate = commands.add_parser("rotate-receipt-key", help="sign new receipts with a new key")
    _add_setting_flags(rotate)
    rotate.set_defaults(handler=cmd_rotate_receipt_key)

    watch = commands.add_parser("watch", help="live feed of an account's events in the terminal")
    watch.add_argument("handle")
    watch.add_argument("--url", default=None, help="server base URL (default PAYCODE_PUBLIC_URL)")
    watch.add_argument("--password", default=None, help="otherwise prompted for")
    watch.add_argument("--token", default=None, help="a device token instead of logging in")
    watch.add_argument("--after", type=int, default=None, help="replay events after this seq")
    watch.set_defaults(handler=cmd_watch)

    hooks = commands.add_parser(
        "webhooks", help="send webhooks in a process of their own (see PAYCODE_WEBHOOK_WORKER)"
    )
    hooks.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")
    hooks.add_argument(
        "--parent-pid", type=int, default=None, help="exit when this process is gone"
    )
    hooks.add_argument(
        "--nudge-socket", default=None, help="a Unix datagram socket to bind for servers' commits"
    )
    _add_setting_flags(hooks)
    hooks.set_defaults(handler=cmd_webhooks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from models.errors import DomainError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except SettingsError as exc:
        print(f"paycode: {exc}", file=sys.stderr)
        return 2
    except DomainError as exc:
        print(f"paycode: {exc.code}: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
