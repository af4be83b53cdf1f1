"""A webhook receiver for the benchmark, in a process of its own: it answers 200 at once and
notes, for each delivery, the time from the event's commit (the body's ``timestamp``, stamped
in the payment's transaction) to its answer. ``GET /stats`` returns them; ``POST /reset``
forgets them.

    python -m loadtests.webhook_sink --port 8123
"""

from __future__ import annotations

import argparse
import json
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loadtests.sales import epoch

_seen: list[tuple[str, float]] = []


async def deliver(request: Request) -> Response:
    body = json.loads(await request.body())
    _seen.append((str(body["type"]), time.time() - epoch(body["timestamp"])))
    return Response(status_code=200)


async def stats(_request: Request) -> Response:
    return JSONResponse({"deliveries": _seen})


async def reset(_request: Request) -> Response:
    _seen.clear()
    return Response(status_code=204)


app = Starlette(
    routes=[
        Route("/stats", stats, methods=["GET"]),
        Route("/reset", reset, methods=["POST"]),
        Route("/hooks/{name}", deliver, methods=["POST"]),
    ]
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
