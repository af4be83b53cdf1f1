"""Listening sockets for ``paycode serve --workers N``: one per worker process, all bound to the
same address with SO_REUSEPORT, so the kernel spreads new connections over the workers.

uvicorn's workers share the one socket their parent binds, and the worker that wakes first
accepts every connection waiting. A client that opens its keep-alive connections together (a
load balancer's pool, a benchmark's) then has nearly all of them on one worker: 63 of 64 on
the 100-shop floor, where the other worker served only its share of the WebSockets
(docs/BENCHMARKS.md). Each worker here listens on a socket of its own in one SO_REUSEPORT
group, and the kernel hands each new connection to one of them by a hash of its addresses.

uvicorn's supervisor still starts, watches and restarts the workers. It hands each new worker
the sockets its parent made by pickling them; a :class:`Listener` pickles as the address to
bind, so each worker, the first ones and any restarted, unpickles it into a socket of its own.
"""

from __future__ import annotations

import logging
import socket
import sys

from uvicorn.config import STARTUP_FAILURE

log = logging.getLogger("uvicorn.error")


def supported() -> bool:
    # Linux spreads connections over the group; other systems would hand them all to one.
    return sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


class Listener:
    """Where every worker listens; becomes that worker's own socket when unpickled there."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def __reduce__(self) -> tuple[object, tuple[str, int]]:
        return (bind, (self.host, self.port))


def _socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to the address in the SO_REUSEPORT group. A worker that cannot bind
    exits as a server that failed to start, which stops the supervisor rather than restarting
    it forever."""
    sock = _socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        sys.exit(STARTUP_FAILURE)
    sock.set_inheritable(True)
    return sock


def check_free(host: str, port: int) -> None:
    """Raise OSError if anything is bound to the address. A socket without SO_REUSEPORT cannot
    share it with anyone, so this also refuses a second server started on the same port, which
    would otherwise join the group and take a share of the first one's connections."""
    probe = _socket(host)
    try:
        probe.bind((host, port))
    finally:
        probe.close()
