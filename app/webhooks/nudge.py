"""A server's commits told to its sender process, so that deliveries leave at once.

Sending on its own event loop, a server wakes its webhook worker when it commits events
(``WebhookWorker.nudge``). The sender process ``paycode serve`` starts has no such news: it
would find new events only at its next look. So the sender binds a Unix datagram socket
(``Listener``) and every worker of the server sends it one empty datagram when it has
published committed events (``Nudger``), at most one per ``MIN_GAP``: under load one pass of
the sender carries every commit of its spacing anyway. A datagram that finds no listener (the
sender is starting again) or a full queue is dropped; the sender's own look, every quarter of a
second, finds those events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable

NUDGE_ENV = "PAYCODE_SENDER_NUDGE"
MIN_GAP = 0.005


class Nudger:
    """A server worker's side: one datagram per burst of commits, never blocking."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self._sent_at = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._sent_at < MIN_GAP:
            return
        self._sent_at = now
        # No listener (it is starting again), or its queue full: its look finds the events.
        with contextlib.suppress(OSError):
            self.sock.sendto(b"", self.path)

    def close(self) -> None:
        self.sock.close()


class Listener:
    """The sender's side: calls ``wake`` once for whatever datagrams arrived since the last."""

    def __init__(self, path: str, wake: Callable[[], None]) -> None:
        self.path = path
        self.wake = wake
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a previous sender's, killed before it could remove it
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(16)
        self.wake()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
