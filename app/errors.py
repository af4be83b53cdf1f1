"""Domain errors and HTTP errors become the one error body of spec §2, here and only here."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.http import JsonResponse
from models import errors

log = logging.getLogger("paycode.errors")

STATUS_BY_ERROR: list[tuple[type[errors.DomainError], int]] = [
    (errors.Malformed, 400),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.PayloadTooLarge, 413),
    (errors.Invalid, 422),
    (errors.RateLimited, 429),
    (errors.Unavailable, 503),
]

CODE_BY_STATUS = {
    400: "malformed_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "field": field}}


def status_of(exc: errors.DomainError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 400


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    return JsonResponse(error_body(code, message, field), status)


def domain_error_response(exc: errors.DomainError) -> Response:
    response = error_response(status_of(exc), exc.code, exc.message, exc.field)
    if isinstance(exc, (errors.RateLimited, errors.Unavailable)):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


async def domain_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.DomainError)
    return domain_error_response(exc)


async def http_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = CODE_BY_STATUS.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), None)
