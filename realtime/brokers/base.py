"""The broker interface: per-account channels, one control channel, and a sink to deliver to.

A broker moves opaque payloads; what they mean is the hub's business. Subscriptions are per
account so an instance only receives the events of accounts it has sockets for.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Protocol


class BrokerSink(Protocol):
    """What a broker delivers to (the hub). Called on the event loop; must not block."""

    def deliver(self, account_id: str, payload: bytes) -> None: ...

    def control(self, payload: bytes) -> None: ...

    def resync(self) -> None:
        """The broker reconnected: messages may have been lost while it was away."""
        ...


class Broker(ABC):
    def __init__(self, url: str, sink: BrokerSink) -> None:
        self.url = url
        self.sink = sink
        self.subscriptions: set[str] = set()

    @abstractmethod
    async def connect(self) -> None:
        """Start; must not fail when the backend is down (the outbox stays the truth)."""

    @abstractmethod
    async def disconnect(self) -> None: ...

    @abstractmethod
    async def subscribe(self, account_id: str) -> None:
        """Receive the account's channel; returns once the backend confirms (or gives up)."""

    @abstractmethod
    async def unsubscribe(self, account_id: str) -> None: ...

    @abstractmethod
    async def publish(self, messages: Iterable[tuple[str, bytes]]) -> None:
        """Publish (account_id, payload) pairs, in order, in as few round trips as it can."""

    @abstractmethod
    async def publish_control(self, payload: bytes) -> None: ...

    @property
    @abstractmethod
    def connected(self) -> bool: ...
