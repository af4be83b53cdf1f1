"""In-process broker. ``memory://`` is private to one hub; ``memory://NAME`` joins a named
bus shared by every hub of this process with the same NAME (tests use it to stand in for
several instances without Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from realtime.brokers.base import Broker, BrokerSink

_buses: dict[str, set[MemoryBroker]] = {}


class MemoryBroker(Broker):
    def __init__(self, url: str, sink: BrokerSink) -> None:
        super().__init__(url, sink)
        name = url.split("://", 1)[1].strip("/")
        self.bus = name or f"private-{id(self)}"
        self._open = False

    @property
    def connected(self) -> bool:
        return self._open

    async def connect(self) -> None:
        _buses.setdefault(self.bus, set()).add(self)
        self._open = True

    async def disconnect(self) -> None:
        self._open = False
        peers = _buses.get(self.bus)
        if peers is not None:
            peers.discard(self)
            if not peers:
                del _buses[self.bus]
        self.subscriptions.clear()

    async def subscribe(self, account_id: str) -> None:
        self.subscriptions.add(account_id)

    async def unsubscribe(self, account_id: str) -> None:
        self.subscriptions.discard(account_id)

    async def publish(self, messages: Iterable[tuple[str, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        for account_id, payload in messages:
            for peer in list(_buses.get(self.bus, ())):
                if account_id in peer.subscriptions:
                    # Delivered on a later loop turn, as a network broker would.
                    loop.call_soon(peer.sink.deliver, account_id, payload)

    async def publish_control(self, payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        for peer in list(_buses.get(self.bus, ())):
            loop.call_soon(peer.sink.control, payload)
