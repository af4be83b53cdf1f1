"""Local fan-out of account events to the sockets of this process."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

Listener = Callable[[int, dict[str, Any]], None]


class Hub:
    """Delivers each published event to every local listener of its account."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = defaultdict(set)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._listeners.clear()

    async def publish(self, account_id: str, seq: int, event: dict[str, Any]) -> None:
        for listener in list(self._listeners.get(account_id, ())):
            listener(seq, event)

    async def revoke_device(self, account_id: str, device_id: str) -> None:
        return None
