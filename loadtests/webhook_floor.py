"""The floor of one webhook attempt: the sender's own CPU per signed POST, with no database
and no payment around it, against the benchmark's receiver in a process of its own.

    python -m loadtests.webhook_floor            # 20,000 attempts at 32 and at 256 in flight

What a delivery costs a serving process can be compared with this: the rest is the queue's
share of a pass, the metrics, and the event loop's and the kernel's work for one more request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from app.webhooks import signing
from app.webhooks.addresses import system_resolver
from app.webhooks.sender import Outcome, Sender
from loadtests.webhooks import start_sink

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = json.dumps(
    {
        "type": "payment.succeeded",
        "timestamp": "2026-11-29T18:00:00.000000Z",
        "seq": 12,
        "data": {"id": "pay_0123456789abcdef", "amount": 1234, "currency": "CNY"},
    },
    separators=(",", ":"),
).encode()


async def attempts(port: int, count: int, in_flight: int, endpoints: int) -> dict[str, Any]:
    sender = Sender(allow_private=True, resolver=system_resolver, max_connections=in_flight)
    slots = asyncio.Semaphore(in_flight)
    finished = asyncio.Event()
    left = [count]
    outcomes: dict[str, int] = {}

    def landed(outcome: Outcome) -> None:
        outcomes[outcome.outcome] = outcomes.get(outcome.outcome, 0) + 1
        slots.release()
        left[0] -= 1
        if left[0] == 0:
            finished.set()

    try:
        for _ in range(200):  # connections opened and kept before the clock starts
            await sender.post(f"http://127.0.0.1:{port}/hooks/0", {}, BODY)
        before = resource.getrusage(resource.RUSAGE_SELF)
        began = time.perf_counter()
        for n in range(count):
            await slots.acquire()
            headers = signing.headers([SECRET], f"msg_{n}", int(time.time()), BODY)
            url = f"http://127.0.0.1:{port}/hooks/{n % endpoints}"
            sender.send(url, headers.items(), BODY, landed)
        await finished.wait()
        wall = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await sender.close()
    return {
        "attempts": count,
        "in_flight": in_flight,
        "per_second": round(count / wall),
        "user_us_per_attempt": round((after.ru_utime - before.ru_utime) / count * 1e6, 1),
        "system_us_per_attempt": round((after.ru_stime - before.ru_stime) / count * 1e6, 1),
        "outcomes": outcomes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attempts", type=int, default=20000)
    parser.add_argument("--endpoints", type=int, default=33)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="paycode-webhook-floor-") as logs:
        sink, port = start_sink(Path(logs))
        try:
            for in_flight in (32, 256):
                result = uvloop.run(attempts(port, args.attempts, in_flight, args.endpoints))
                print(json.dumps(result))
        finally:
            sink.terminate()
            sink.wait(timeout=15)


if __name__ == "__main__":
    main()
