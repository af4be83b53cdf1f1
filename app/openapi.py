"""The OpenAPI 3.1 description of the public API (spec §9), served at /openapi.json.

Written out rather than inferred: it is the contract clients and the fuzzing suite are held to,
so a route that drifts from it fails a test instead of silently changing the contract.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


STRING = {"type": "string"}
TIME = {"type": "string", "format": "date-time"}
AMOUNT = {"type": "integer", "minimum": 1, "maximum": 10**12}
MONEY = {"type": "integer", "minimum": 0}
HANDLE = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{3,32}$"}


def obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


def listing(item: str) -> dict[str, Any]:
    return obj({"data": {"type": "array", "items": ref(item)}, "next_cursor": nullable(STRING)})


ITEM = obj(
    {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "quantity": {"type": "integer", "minimum": 1, "maximum": 10**6},
        "unit_amount": {"type": "integer", "minimum": 0, "maximum": 10**12},
    }
)

WEBHOOK_EVENTS = {
    "type": "array",
    "items": {
        "enum": [
            "payment.succeeded",
            "payment.refunded",
            "code.paid",
            "agency.requested",
            "agency.activated",
            "agency.revoked",
            "deposit.succeeded",
            "webhook.disabled",
        ]
    },
    "minItems": 1,
}


def webhook_schemas() -> dict[str, Any]:
    """Spec §11: endpoints (the secret only when created or rotated) and deliveries."""
    endpoint = {
        "id": STRING,
        "url": {"type": "string", "maxLength": 2048},
        "events": WEBHOOK_EVENTS,
        "description": nullable(STRING),
        "enabled": {"type": "boolean"},
        "created_at": TIME,
    }
    attempt = {
        "number": {"type": "integer", "minimum": 1},
        "outcome": {
            "enum": [
                "in_flight",
                "succeeded",
                "http_error",
                "redirect",
                "timeout",
                "connection_error",
                "refused_address",
                "interrupted",
            ]
        },
        "status_code": nullable({"type": "integer"}),
        "error": nullable(STRING),
        "started_at": TIME,
        "finished_at": nullable(TIME),
    }
    delivery = {
        "id": STRING,
        "webhook_id": STRING,
        "type": STRING,
        "seq": nullable({"type": "integer"}),
        "status": {"enum": ["pending", "succeeded", "failed"]},
        "attempts": {"type": "integer", "minimum": 0},
        "last_status_code": nullable({"type": "integer"}),
        "last_error": nullable(STRING),
        "next_attempt_at": nullable(TIME),
        "created_at": TIME,
        "delivered_at": nullable(TIME),
    }
    return {
        "Webhook": obj(endpoint),
        "WebhookWithSecret": obj({**endpoint, "secret": STRING}),
        "WebhookAttempt": obj(attempt),
        "WebhookDelivery": obj(
            {**delivery, "attempt_log": {"type": "array", "items": ref("WebhookAttempt")}},
            list(delivery),
        ),
    }


SCHEMAS: dict[str, Any] = {
    "Error": obj(
        {
            "error": obj(
                {"code": STRING, "message": STRING, "field": nullable(STRING)},
            )
        }
    ),
    "Party": obj({"handle": STRING, "display_name": STRING}),
    "Account": obj(
        {
            "id": STRING,
            "handle": STRING,
            "display_name": STRING,
            "balance": MONEY,
            "currency": STRING,
            "created_at": TIME,
        }
    ),
    "PublicAccount": obj({"id": STRING, "handle": STRING, "display_name": STRING}),
    "Device": obj(
        {
            "id": STRING,
            "name": STRING,
            "created_at": TIME,
            "last_seen_at": TIME,
            "revoked_at": nullable(TIME),
        },
        ["id", "name", "created_at", "last_seen_at"],
    ),
    "Session": obj({"token": STRING, "device": ref("Device"), "account": ref("Account")}),
    "Deposit": obj(
        {"id": STRING, "handle": STRING, "amount": AMOUNT, "currency": STRING, "created_at": TIME}
    ),
    "Agency": obj(
        {
            "id": STRING,
            "payee": ref("Party"),
            "agent": ref("Party"),
            "status": {"enum": ["pending", "active", "revoked"]},
            "label": nullable(STRING),
            "can_refund": {"type": "boolean"},
            "created_by": ref("Party"),
            "created_at": TIME,
        }
    ),
    "Item": ITEM,
    "Code": obj(
        {
            "id": STRING,
            "kind": {"enum": ["static", "dynamic"]},
            "status": {"enum": ["active", "paid", "expired", "cancelled", "revoked"]},
            "agency_id": STRING,
            "agent": ref("Party"),
            "payee": ref("Party"),
            "label": nullable(STRING),
            "amount": nullable(AMOUNT),
            "currency": STRING,
            "items": {"type": "array", "items": ref("Item")},
            "memo": nullable(STRING),
            "token": STRING,
            "short_code": {"type": "string", "pattern": "^[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{2}$"},
            "url": STRING,
            "expires_at": nullable(TIME),
            "created_at": TIME,
            "paid_payment_id": nullable(STRING),
        }
    ),
    "Scan": obj(
        {
            "kind": {"enum": ["static", "dynamic"]},
            "status": {"enum": ["active", "paid", "expired", "cancelled", "revoked"]},
            "payee": ref("Party"),
            "agent": ref("Party"),
            "label": nullable(STRING),
            "amount": nullable(AMOUNT),
            "currency": STRING,
            "items": {"type": "array", "items": ref("Item")},
            "memo": nullable(STRING),
            "expires_at": nullable(TIME),
        }
    ),
    "Receipt": obj({"payload": STRING, "signature": STRING, "key_id": STRING}),
    "Payment": obj(
        {
            "id": STRING,
            "status": {"enum": ["succeeded", "partially_refunded", "refunded"]},
            "amount": AMOUNT,
            "refunded_amount": MONEY,
            "currency": STRING,
            "payer": ref("Party"),
            "payee": ref("Party"),
            "agent": nullable(ref("Party")),
            "code_id": nullable(STRING),
            "code_kind": nullable({"enum": ["static", "dynamic"]}),
            "code_label": nullable(STRING),
            "items": {"type": "array", "items": ref("Item")},
            "memo": nullable(STRING),
            "created_at": TIME,
            "receipt": ref("Receipt"),
        }
    ),
    "Refund": obj(
        {
            "id": STRING,
            "payment_id": STRING,
            "amount": AMOUNT,
            "reason": nullable(STRING),
            "created_at": TIME,
        }
    ),
    "Event": obj(
        {"seq": {"type": "integer", "minimum": 1}, "type": STRING, "created_at": TIME, "data": {}}
    ),
    "AgentReportRow": obj(
        {
            "agent": nullable(ref("Party")),
            "code_id": nullable(STRING),
            "label": nullable(STRING),
            "count": {"type": "integer", "minimum": 0},
            "gross": MONEY,
            "refunded": MONEY,
            "net": {"type": "integer"},
        }
    ),
    "ReceiptKey": obj({"key_id": STRING, "public_key": STRING, "created_at": TIME}),
    "Verification": obj({"valid": {"type": "boolean"}, "payment": nullable(ref("Payment"))}),
    **webhook_schemas(),
}

ERRORS = {"description": "error", "content": {"application/json": {"schema": ref("Error")}}}
BEARER = [{"bearer": []}]


def body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def answer(status: int, schema: dict[str, Any] | None, *errors: int) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if schema is None:
        responses[str(status)] = {"description": "done"}
    else:
        responses[str(status)] = {
            "description": "success",
            "content": {"application/json": {"schema": schema}},
        }
    for code in errors:
        responses[str(code)] = ERRORS
    return responses


def query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": STRING}


IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
PAGE = [
    query("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
    query("cursor", STRING),
]
PAYMENT_FILTERS = [
    query("role", {"enum": ["payer", "payee", "agent"]}),
    query("agent", STRING),
    query("code_id", STRING),
    query("from", TIME),
    query("to", TIME),
]
CODE_STATUS = {"enum": ["active", "paid", "expired", "cancelled", "revoked"]}
AUTH_ERRORS = (401, 422)


def op(
    summary: str,
    responses: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    request: dict[str, Any] | None = None,
    auth: bool = True,
) -> dict[str, Any]:
    # A request that is not valid HTTP/1.1 (a Content-Length that is not a number) is 400
    # with the error body, on any route, before the route sees it.
    responses.setdefault("400", ERRORS)
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if auth:
        operation["security"] = BEARER
    if params:
        operation["parameters"] = params
    if request:
        operation["requestBody"] = request
    if params or request:
        # Any value the caller sends may be refused (spec §2: 422 invalid field).
        responses.setdefault("422", ERRORS)
    return operation


def api_paths() -> dict[str, Any]:
    return {
        "/accounts": {
            "post": op(
                "Sign up",
                answer(201, ref("Account"), 400, 409, 413, 422),
                request=body(obj({"handle": HANDLE, "display_name": STRING, "password": STRING})),
                auth=False,
            )
        },
        "/accounts/{handle}": {
            "get": op(
                "Public profile",
                answer(200, ref("PublicAccount"), 401, 404),
                params=[path("handle")],
            )
        },
        "/sessions": {
            "post": op(
                "Log in a device",
                answer(201, ref("Session"), 400, 401, 413, 422, 429),
                request=body(
                    obj(
                        {"handle": STRING, "password": STRING, "device_name": STRING},
                        ["handle", "password"],
                    )
                ),
                auth=False,
            )
        },
        "/sessions/current": {"delete": op("Log out this device", answer(204, None, 401))},
        "/me": {"get": op("The caller's account", answer(200, ref("Account"), 401))},
        "/devices": {"get": op("Logged-in devices", answer(200, listing("Device"), 401))},
        "/devices/{device_id}": {
            "delete": op("Revoke a device", answer(204, None, 401, 404), params=[path("device_id")])
        },
        "/admin/deposits": {
            "post": op(
                "Fund an account (admin token)",
                answer(201, ref("Deposit"), 400, 401, 404, 413, 422),
                request=body(obj({"handle": STRING, "amount": AMOUNT})),
            )
        },
        "/agencies": {
            "post": op(
                "Open an agency",
                answer(201, ref("Agency"), 400, 401, 404, 409, 413, 422),
                request=body(
                    obj(
                        {
                            "agent": STRING,
                            "payee": STRING,
                            "label": STRING,
                            "can_refund": {"type": "boolean"},
                        },
                        [],
                    )
                ),
            ),
            "get": op(
                "List agencies",
                answer(200, listing("Agency"), *AUTH_ERRORS),
                params=[
                    query("role", {"enum": ["agent", "payee"]}),
                    query("status", {"enum": ["pending", "active", "revoked"]}),
                    *PAGE,
                ],
            ),
        },
        "/agencies/{agency_id}/accept": {
            "post": op(
                "Accept a pending agency (payee)",
                answer(200, ref("Agency"), 401, 403, 404, 409),
                params=[path("agency_id")],
            )
        },
        "/agencies/{agency_id}/revoke": {
            "post": op(
                "Revoke or resign an agency",
                answer(200, ref("Agency"), 401, 404, 409),
                params=[path("agency_id")],
            )
        },
        "/codes": {
            "post": op(
                "Issue a collection code",
                answer(201, ref("Code"), 400, 401, 404, 409, 413, 422),
                params=[IDEMPOTENCY],
                request=body(
                    obj(
                        {
                            "agency_id": STRING,
                            "kind": {"enum": ["static", "dynamic"]},
                            "label": STRING,
                            "amount": AMOUNT,
                            "items": {"type": "array", "items": ref("Item")},
                            "memo": STRING,
                            "expires_in": {"type": "integer", "minimum": 60, "maximum": 86400},
                        },
                        ["agency_id", "kind"],
                    )
                ),
            ),
            "get": op(
                "List codes",
                answer(200, listing("Code"), *AUTH_ERRORS),
                params=[
                    query("role", {"enum": ["agent", "payee"]}),
                    query("status", CODE_STATUS),
                    *PAGE,
                ],
            ),
        },
        "/codes/{code_id}": {
            "get": op("A code", answer(200, ref("Code"), 401, 404), params=[path("code_id")])
        },
        "/codes/{code_id}/cancel": {
            "post": op(
                "Cancel an unpaid code",
                answer(200, ref("Code"), 401, 404, 409),
                params=[path("code_id")],
            )
        },
        **{
            f"/codes/{{code_id}}/{image}": {
                "get": op(
                    f"The code as {image}",
                    {
                        "200": {"description": "image", "content": {mime: {}}},
                        "401": ERRORS,
                        "404": ERRORS,
                        "422": ERRORS,
                    },
                    params=[path("code_id")]
                    + ([query("scale", {"type": "integer"})] if image.startswith("qr") else []),
                )
            }
            for image, mime in (
                ("qr.svg", "image/svg+xml"),
                ("qr.png", "image/png"),
                ("barcode.svg", "image/svg+xml"),
            )
        },
        "/scan/{code}": {
            "get": op(
                "What a payer sees before paying",
                answer(200, ref("Scan"), 401, 404, 429),
                params=[path("code")],
            )
        },
        "/payments": {
            "post": op(
                "Pay by code or directly to a handle",
                answer(201, ref("Payment"), 400, 401, 404, 409, 413, 422, 429),
                params=[IDEMPOTENCY],
                request=body(
                    obj({"code": STRING, "payee": STRING, "amount": AMOUNT, "memo": STRING}, [])
                ),
            ),
            "get": op(
                "List payments",
                answer(200, listing("Payment"), *AUTH_ERRORS),
                params=[*PAYMENT_FILTERS, *PAGE],
            ),
        },
        "/payments.csv": {
            "get": op(
                "Payments as CSV",
                {
                    "200": {"description": "CSV", "content": {"text/csv": {}}},
                    "401": ERRORS,
                    "422": ERRORS,
                },
                params=PAYMENT_FILTERS,
            )
        },
        "/payments/{payment_id}": {
            "get": op(
                "A payment", answer(200, ref("Payment"), 401, 404), params=[path("payment_id")]
            )
        },
        "/payments/{payment_id}/refunds": {
            "post": op(
                "Refund a payment in full or in part",
                answer(201, ref("Refund"), 400, 401, 403, 404, 409, 413, 422),
                params=[path("payment_id"), IDEMPOTENCY],
                request=body(obj({"amount": AMOUNT, "reason": STRING}, [])),
            )
        },
        "/reports/agents": {
            "get": op(
                "Per agent and per code totals (payee)",
                answer(200, listing("AgentReportRow"), *AUTH_ERRORS),
                params=[query("from", TIME), query("to", TIME)],
            )
        },
        "/events": {
            "get": op(
                "The caller's outbox, oldest first",
                answer(200, listing("Event"), *AUTH_ERRORS),
                params=[
                    query("after", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}),
                    *PAGE,
                ],
            )
        },
        "/receipts/keys": {
            "get": op("Receipt signing keys", answer(200, listing("ReceiptKey")), auth=False)
        },
        "/receipts/verify": {
            "post": op(
                "Check a receipt",
                answer(200, ref("Verification"), 400, 401, 413, 422),
                request=body(obj({"receipt": ref("Receipt")})),
            )
        },
        **webhook_paths(),
    }


def webhook_paths() -> dict[str, Any]:
    hook = path("webhook_id")
    return {
        "/webhooks": {
            "post": op(
                "Register a webhook endpoint (its secret is shown only here)",
                answer(201, ref("WebhookWithSecret"), 400, 401, 409, 413, 422),
                request=body(
                    obj(
                        {"url": STRING, "events": WEBHOOK_EVENTS, "description": STRING},
                        ["url"],
                    )
                ),
            ),
            "get": op("List webhook endpoints", answer(200, listing("Webhook"), 401), params=PAGE),
        },
        "/webhooks/{webhook_id}": {
            "get": op("A webhook endpoint", answer(200, ref("Webhook"), 401, 404), params=[hook]),
            "patch": op(
                "Change a webhook endpoint",
                answer(200, ref("Webhook"), 400, 401, 404, 413, 422),
                params=[hook],
                request=body(
                    obj(
                        {
                            "url": STRING,
                            "events": WEBHOOK_EVENTS,
                            "description": nullable(STRING),
                            "enabled": {"type": "boolean"},
                        },
                        [],
                    )
                ),
            ),
            "delete": op("Delete a webhook endpoint", answer(204, None, 401, 404), params=[hook]),
        },
        "/webhooks/{webhook_id}/rotate-secret": {
            "post": op(
                "New secret; the previous one also signs for 24 h",
                answer(200, ref("WebhookWithSecret"), 401, 404),
                params=[hook],
            )
        },
        "/webhooks/{webhook_id}/test": {
            "post": op(
                "Deliver a webhook.test event",
                answer(202, ref("WebhookDelivery"), 401, 404, 409),
                params=[hook],
            )
        },
        "/webhooks/{webhook_id}/deliveries": {
            "get": op(
                "Deliveries to the endpoint, newest first, with every attempt",
                answer(200, listing("WebhookDelivery"), 401, 404),
                params=[hook, *PAGE],
            )
        },
        "/webhooks/{webhook_id}/deliveries/{delivery_id}/retry": {
            "post": op(
                "A new attempt of a delivery now",
                answer(202, ref("WebhookDelivery"), 401, 404),
                params=[hook, path("delivery_id")],
            )
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "paycode",
            "version": "1",
            "description": "Payment collection through agent collection codes (spec v1).",
        },
        "servers": [{"url": "/api/v1"}],
        "paths": api_paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


_DOCUMENT = document()


async def openapi_json(_request: Request) -> Response:
    return JSONResponse(_DOCUMENT)


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
