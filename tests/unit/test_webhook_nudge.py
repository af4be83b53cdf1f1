"""The datagrams a server's workers send their sender process on commit: one per burst,
never blocking or failing when nobody listens, and a listener that takes over the socket
a killed sender left behind."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from app.webhooks.nudge import MIN_GAP, Listener, Nudger


def test_a_burst_of_commits_is_one_wake_and_a_later_one_another(tmp_path: Path) -> None:
    path = str(tmp_path / "nudge")

    async def main() -> int:
        woken: list[int] = []
        listener = Listener(path, lambda: woken.append(1))
        nudger = Nudger(path)
        try:
            for _ in range(5):
                nudger()
            await asyncio.sleep(MIN_GAP * 4)
            nudger()
            await asyncio.sleep(MIN_GAP * 4)
        finally:
            nudger.close()
            listener.close()
        return len(woken)

    assert asyncio.run(main()) == 2
    assert not Path(path).exists()


def test_nobody_listening_is_no_error(tmp_path: Path) -> None:
    nudger = Nudger(str(tmp_path / "nobody"))
    nudger()
    nudger.close()


def test_a_listener_takes_over_a_socket_left_behind(tmp_path: Path) -> None:
    path = str(tmp_path / "nudge")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)
    stale.close()  # a killed sender leaves its file

    async def main() -> int:
        woken: list[int] = []
        listener = Listener(path, lambda: woken.append(1))
        nudger = Nudger(path)
        nudger()
        await asyncio.sleep(MIN_GAP * 4)
        nudger.close()
        listener.close()
        return len(woken)

    assert asyncio.run(main()) == 1
