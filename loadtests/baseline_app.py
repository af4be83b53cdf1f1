"""The machine's ceiling for one HTTP request: a bare Starlette JSON POST endpoint.

Served by the same uvicorn settings as ``paycode serve`` so that the ratio of paycode's
payments/s to this endpoint's requests/s says how much the product itself costs.
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def echo(request: Request) -> Response:
    body = json.loads(await request.body())
    return JSONResponse({"ok": True, "amount": body.get("amount")}, status_code=201)


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def idle_socket(websocket: WebSocket) -> None:
    """The least a live-confirmation socket can cost: accept, answer the hello, then wait."""
    await websocket.accept(subprotocol="paycode.v1.json")
    try:
        await websocket.receive_text()
        await websocket.send_text(json.dumps({"type": "welcome", "last_seq": 0}))
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        return


app = Starlette(
    routes=[
        Route("/echo", echo, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        WebSocketRoute("/ws", idle_socket),
    ]
)
