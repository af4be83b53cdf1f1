"""``paycode serve``'s webhook sender: a ``paycode webhooks`` process beside the server's.

Python runs one process on one core at a time. A sale's four deliveries sent on the server's
own event loop took a quarter of its saturated payments/s; the same deliveries sent by a
process of their own, on another core, about half that (docs/BENCHMARKS.md). So by default
``paycode serve`` starts that process itself (``PAYCODE_WEBHOOK_WORKER=process``), tells its
workers not to send, starts the sender again if it dies, and stops it when the server stops.
A sender whose server died without a word (SIGKILL) sees its parent gone and exits, removing
the socket's directory the server could not. The server's workers tell it of their commits
(app/webhooks/nudge.py), so that deliveries leave as soon as from the server's own loop.

With one worker the server has no metrics directory to share; the sender serves its metrics on
a loopback port the server knows (``SENDER_METRICS_ENV``), and the server's ``/metrics``
shows the sender's webhook families in place of its own (``with_sender_families``). With
several workers the sender writes into their shared directory like any of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request

from app.cluster import free_port

log = logging.getLogger("paycode.webhooks")

SENDER_METRICS_ENV = "PAYCODE_SENDER_METRICS_PORT"
FAMILY_PREFIX = b"paycode_webhook_"
# A sender that keeps dying is started again at most this often.
RESTART_PAUSE = 1.0
STOP_TIMEOUT = 15.0

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SenderProcess:
    """One supervised ``paycode webhooks``: started, restarted when it exits on its own,
    stopped with SIGTERM (its attempts' leases released, docs/WEBHOOKS.md). With
    ``own_metrics`` it serves its metrics on a loopback port of its own, drawn afresh at each
    start (a port taken meanwhile would fail every restart) and published in this process's
    environment, where the one worker's ``/metrics`` reads it."""

    def __init__(self, env: dict[str, str], *, own_metrics: bool) -> None:
        self.env = env
        self.own_metrics = own_metrics
        self.metrics_port: int | None = None
        # The socket the sender listens on for the workers' commits; its directory is ours.
        self._nudge_dir = tempfile.mkdtemp(prefix="paycode-sender-")
        self.nudge_path = os.path.join(self._nudge_dir, "nudge")
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "app.cli", "webhooks", "--parent-pid", str(os.getpid())]
        command += ["--nudge-socket", self.nudge_path]
        if self.metrics_port is not None:
            command += ["--metrics-port", str(self.metrics_port)]
        return command

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(
            target=self._watch, name="paycode-webhook-sender", daemon=True
        )
        self._watcher.start()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            # Its output goes where the server's goes.
            if self.own_metrics:
                self.metrics_port = free_port()
                os.environ[SENDER_METRICS_ENV] = str(self.metrics_port)
            # Its own session: a terminal's Ctrl-C reaches the server, which stops it in
            # order, and not the sender too, which would look like a death to restart from.
            self.process = subprocess.Popen(
                self.command(), env=self.env, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def _watch(self) -> None:
        while not self._stopping.is_set():
            process = self.process
            assert process is not None
            code = process.wait()
            if self._stopping.is_set():
                return
            forget_process(process.pid)
            log.warning("the webhook sender exited with %s; starting it again", code)
            self._stopping.wait(RESTART_PAUSE)
            try:
                self._spawn()
            except OSError as exc:
                # Out of processes or descriptors for now: the next round tries again.
                log.warning("the webhook sender could not be started: %s", exc)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is None:
            shutil.rmtree(self._nudge_dir, ignore_errors=True)
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        forget_process(process.pid)
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        shutil.rmtree(self._nudge_dir, ignore_errors=True)


def forget_process(pid: int) -> None:
    """The live gauges of a sender that exited leave the shared metrics directory."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)


def sender_metrics() -> bytes | None:
    """The sender's exposition when this server supervises one on a loopback port, or None
    (no sender of ours, or it is starting again)."""
    port = os.environ.get(SENDER_METRICS_ENV)
    if not port:
        return None
    try:
        with _DIRECT.open(f"http://127.0.0.1:{int(port)}/metrics", timeout=1.0) as response:
            return bytes(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _family_of(line: bytes) -> bytes:
    if line.startswith(b"# HELP ") or line.startswith(b"# TYPE "):
        return line[7:]
    return line


def with_sender_families(own: bytes, sender: bytes | None) -> bytes:
    """The server's exposition with its webhook families (idle in a server that does not
    send) replaced by the sender's; without the sender's, none are shown rather than zeros."""
    kept = [line for line in own.splitlines() if not _family_of(line).startswith(FAMILY_PREFIX)]
    if sender is not None:
        kept += [line for line in sender.splitlines() if _family_of(line).startswith(FAMILY_PREFIX)]
    return b"\n".join(kept) + b"\n"
