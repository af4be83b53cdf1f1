"""`paycode serve` subprocesses for realtime tests: real servers sharing a database and a
broker, started on free ports and stopped (or killed) by the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent


class ServeProcess:
    def __init__(
        self,
        database_url: str,
        broker_url: str,
        admin_token: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.extra_env = extra_env or {}
        self.database_url = database_url
        self.broker_url = broker_url
        self.admin_token = admin_token
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServeProcess:
        env = {
            **os.environ,
            "PAYCODE_DATABASE_URL": self.database_url,
            "PAYCODE_BROKER_URL": self.broker_url,
            "PAYCODE_ADMIN_TOKEN": self.admin_token,
            "PAYCODE_LOG_LEVEL": "warning",
            **self.extra_env,
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"paycode serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("paycode serve did not come up in time")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
