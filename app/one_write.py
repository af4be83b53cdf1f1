"""A response's head and body in one socket write.

uvicorn's HTTP cycle writes a response's status line and headers in one ``transport.write``
and its body in the next, so every small JSON answer costs two ``send`` system calls and
leaves in two TCP segments, each waking the client. The cycle here writes through
:class:`HeadWithBody`, which holds a response head until the body's first write and sends
both at once. A head is never held past the event loop's next turn, so a streamed response
whose first chunk is slow still shows its head at once, as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

# "HTTP/1.1 1xx" (100 Continue) goes at once: the client waits for it before sending the body.
_FINAL_HEAD = b"HTTP/1.1 "
_INFORMATIONAL = b"HTTP/1.1 1"


class HeadWithBody:
    """The connection's transport as its response cycles see it; everything but ``write``
    and ``close`` goes to the transport itself."""

    __slots__ = ("_flush_handle", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            self._transport.write(held + data)
        elif data.startswith(_FINAL_HEAD) and not data.startswith(_INFORMATIONAL):
            self._held = bytes(data)
            self._flush_handle = self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        self._flush_handle = None
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
