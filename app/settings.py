"""Settings, read once and typed (spec §1). Flags win over the environment."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

from app.webhooks.nudge import NUDGE_ENV

DEFAULT_DATABASE_URL = "sqlite:///./paycode.db"


class SettingsError(ValueError):
    """A setting is unusable; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = "memory://"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    public_url_setting: str | None = None
    currency: str = "CNY"
    admin_token: str | None = None
    receipt_key: str | None = None
    # Spec §11: lets webhooks use http:// and private or loopback addresses (development, tests).
    webhook_allow_private: bool = False
    # Whether this app sends webhooks on its own event loop; off when a `paycode webhooks`
    # process sends them (docs/WEBHOOKS.md).
    webhook_worker: bool = True
    # `paycode serve` starts that process itself, and turns its workers' sending off.
    webhook_sender_process: bool = False
    # Where this server's workers tell that process of their commits (app/webhooks/nudge.py).
    webhook_sender_nudge: str | None = None
    # Seconds between two purge passes of a serving process; 0 turns them off (a deployment
    # that runs `paycode purge` from cron instead).
    purge_interval: float = 60.0
    # Fault injection for the test suite: die by SIGKILL between commit and publish.
    fault_kill_after_commit: bool = False
    # What a code issue or a payment may wait in one process besides its own work (503 past it).
    admission_budget_ms: int = 50
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def public_url(self) -> str:
        base = self.public_url_setting or f"http://{self.host}:{self.port}"
        return base.rstrip("/")

    @property
    def broker_scheme(self) -> str:
        return self.broker_url.split("://", 1)[0].lower()

    def validate(self) -> Settings:
        if not re.fullmatch(r"[A-Z]{3}", self.currency):
            raise SettingsError("PAYCODE_CURRENCY must be an ISO 4217 code such as CNY or EUR")
        if self.broker_scheme not in ("memory", "redis", "rediss"):
            raise SettingsError("PAYCODE_BROKER_URL must be memory:// or redis://host:port/db")
        if self.workers < 1:
            raise SettingsError("--workers must be at least 1")
        if self.workers > 1 and self.broker_scheme == "memory":
            raise SettingsError(
                "--workers > 1 needs a shared broker: the memory:// broker reaches only the "
                "sockets of its own process, so confirmations would be lost between workers. "
                "Set PAYCODE_BROKER_URL=redis://host:6379/0."
            )
        if self.admission_budget_ms < 1:
            raise SettingsError("PAYCODE_ADMISSION_BUDGET_MS must be at least 1")
        if not 0 <= self.purge_interval <= 86400:
            raise SettingsError("PAYCODE_PURGE_INTERVAL must be 0 (off) to 86400 seconds")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise SettingsError("PAYCODE_ADMIN_TOKEN must be at least 16 characters")
        return self

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _milliseconds(env: Any, name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    if not raw.isdigit() or len(raw) > 9:
        raise SettingsError(f"{name} must be a whole number of milliseconds")
    return int(raw)


def from_env(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    webhook_worker = _webhook_worker(env)
    return Settings(
        database_url=env.get("PAYCODE_DATABASE_URL") or DEFAULT_DATABASE_URL,
        broker_url=env.get("PAYCODE_BROKER_URL") or "memory://",
        public_url_setting=env.get("PAYCODE_PUBLIC_URL") or None,
        currency=(env.get("PAYCODE_CURRENCY") or "CNY").upper(),
        admin_token=env.get("PAYCODE_ADMIN_TOKEN") or None,
        receipt_key=env.get("PAYCODE_RECEIPT_KEY") or None,
        webhook_allow_private=env.get("PAYCODE_WEBHOOK_ALLOW_PRIVATE") == "1",
        webhook_worker=webhook_worker != "off",
        webhook_sender_process=webhook_worker == "process",
        webhook_sender_nudge=env.get(NUDGE_ENV) or None,
        purge_interval=_seconds(env, "PAYCODE_PURGE_INTERVAL", 60.0),
        fault_kill_after_commit=env.get("PAYCODE_FAULT_KILL_AFTER_COMMIT") == "1",
        admission_budget_ms=_milliseconds(env, "PAYCODE_ADMISSION_BUDGET_MS", 50),
    )


WEBHOOK_WORKER_MODES = ("process", "on", "off")


def _webhook_worker(env: Any) -> str:
    mode = (env.get("PAYCODE_WEBHOOK_WORKER") or "process").lower()
    if mode not in WEBHOOK_WORKER_MODES:
        raise SettingsError("PAYCODE_WEBHOOK_WORKER must be process, on or off")
    return mode


def _seconds(env: Any, name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number of seconds") from exc
