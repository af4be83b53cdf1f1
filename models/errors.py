"""The domain errors: a small hierarchy that app/errors.py maps to HTTP in one place.

Each error carries a stable snake_case ``code`` that clients branch on, a human message and,
when one body field is to blame, its name.
"""

from __future__ import annotations


class DomainError(Exception):
    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field


class Invalid(DomainError):
    """A field is wrong (HTTP 422)."""

    code = "validation_error"


class Malformed(DomainError):
    """The request body cannot be read at all (HTTP 400)."""

    code = "malformed_request"


class Unauthorized(DomainError):
    code = "unauthorized"


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"


class Forbidden(DomainError):
    code = "forbidden"


class NotFound(DomainError):
    """Unknown, or not visible to the caller: the two are never told apart."""

    code = "not_found"


class Conflict(DomainError):
    """The object's state forbids the operation (HTTP 409)."""


class RateLimited(DomainError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class Unavailable(DomainError):
    """The server cannot take this request now; nothing was done (HTTP 503, ``Retry-After``)."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class PayloadTooLarge(DomainError):
    code = "payload_too_large"
