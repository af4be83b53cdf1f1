"""Request plumbing shared by every route: bodies, query parameters, pagination, responses."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from pydantic_core import from_json, to_json
from sqlalchemy.exc import DataError
from sqlalchemy.util import greenlet_spawn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from models.clock import parse_rfc3339
from models.errors import Invalid, Malformed, PayloadTooLarge
from models.group import GroupWriter
from models.sql import Tx

MAX_BODY = 64 * 1024
DEFAULT_LIMIT = 50
MAX_LIMIT = 200

T = TypeVar("T")


async def read_json(request: Request) -> dict[str, Any]:
    """The JSON object of the body: 413 past 64 KiB, 400 if not UTF-8 JSON, 422 if not an object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise PayloadTooLarge("request body is larger than 64 KiB")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge("request body is larger than 64 KiB")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    body = decode_json(raw)
    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object", field=None)
    return body


def decode_json(raw: bytes) -> Any:
    """Strict JSON of UTF-8 text: invalid UTF-8, and a \\u escape of a lone surrogate (a
    ``str`` no encoder downstream accepts: the database driver, argon2, a log line) are
    Malformed, like any other unreadable body. NaN and Infinity are not JSON either."""
    try:
        return from_json(raw, allow_inf_nan=False, cache_strings="keys")
    except ValueError as exc:
        raise Malformed("request body is not valid UTF-8 JSON") from exc


@dataclass(frozen=True, slots=True)
class Later(Generic[T]):
    """A request part parsed before the caller is known, whose error is raised only when the
    value is taken: a request that fails authentication still answers 401 first, as when the
    token was checked before the body was read."""

    value: T | None = None
    error: Exception | None = None

    def get(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


def later(parse: Callable[..., T], *args: Any) -> Later[T]:
    try:
        return Later(parse(*args))
    except (Invalid, Malformed, PayloadTooLarge) as exc:
        return Later(error=exc)


async def read_json_later(request: Request) -> Later[dict[str, Any]]:
    """The body as :func:`read_json` reads it, its 400/413/422 kept for :meth:`Later.get`."""
    try:
        return Later(await read_json(request))
    except (Invalid, Malformed, PayloadTooLarge) as exc:
        return Later(error=exc)


def query_int(
    request: Request, name: str, *, default: int | None, low: int, high: int
) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise Invalid(f"{name} must be an integer", field=name) from exc
    if not low <= value <= high:
        raise Invalid(f"{name} must be between {low} and {high}", field=name)
    return value


def query_choice(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise Invalid(f"{name} must be one of {', '.join(choices)}", field=name)
    return raw


def query_time(request: Request, name: str) -> Any:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_rfc3339(raw)
    except ValueError as exc:
        raise Invalid(f"{name} must be an RFC 3339 time", field=name) from exc


def page_params(request: Request) -> tuple[int, str | None]:
    limit = query_int(request, "limit", default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    assert limit is not None
    cursor = request.query_params.get("cursor") or None
    if cursor is not None and len(cursor) > 100:
        raise Invalid("cursor is not valid", field="cursor")
    return limit, cursor


def page(items: list[Any], limit: int, cursor_of: Callable[[Any], str]) -> dict[str, Any]:
    """A list body from up to limit+1 fetched rows: the extra row only says there is more."""
    more = len(items) > limit
    items = items[:limit]
    return {"data": items, "next_cursor": cursor_of(items[-1]) if more and items else None}


_JSON_TYPE = (b"content-type", b"application/json")


class JsonResponse(JSONResponse):
    """A JSON body encoded by pydantic-core's compiled encoder: the same bytes as Starlette's
    ``json.dumps(content, ensure_ascii=False, separators=(",", ":"))`` for every value a
    response holds (key order kept, non-ASCII characters as UTF-8), at a fraction of the CPU;
    its two headers are built directly."""

    def __init__(
        self, content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        if headers is not None or status_code < 200 or status_code in (204, 304):
            super().__init__(content, status_code, headers)
            return
        self.status_code = status_code
        self.background = None
        self.body = body = to_json(content)
        self.raw_headers = [(b"content-length", b"%d" % len(body)), _JSON_TYPE]

    def render(self, content: Any) -> bytes:
        return to_json(content)


def ok(body: Any, status: int = 200) -> Response:
    return JsonResponse(body, status)


def no_content() -> Response:
    return Response(status_code=204)


# As many as anyio's default thread limit, which served here before. A plain executor: anyio's
# to_thread (Starlette's run_in_threadpool) costs three times as much CPU per hop.
_WORKERS = ThreadPoolExecutor(max_workers=40, thread_name_prefix="paycode-work")


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking database unit of work off the event loop: one thread hop per request,
    in the caller's context (the request id its log lines carry)."""
    context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_WORKERS, context.run, partial(fn, *args, **kwargs))
    except DataError as exc:
        raise _refused_value(exc) from exc


async def in_writer(group: GroupWriter, work: Callable[[Tx], T]) -> T:
    """``work(tx)`` in the next batch of SQLite's group commit, written by the event loop
    itself at its next turn (models/group.py): the request takes no worker thread and no
    hop to the writer thread unless another connection holds the write lock."""
    try:
        return await group.submit_here(work)
    except DataError as exc:
        raise _refused_value(exc) from exc


async def on_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking-style database code on the event loop: in a greenlet whose driver waits
    (a ``Database.autocommit_on_loop`` unit's) are awaits, so the request takes no worker
    thread and never waits for the GIL behind the loop. ``fn`` must do no other blocking I/O:
    the loop stops while it runs."""
    try:
        return await greenlet_spawn(fn, *args)
    except DataError as exc:
        raise _refused_value(exc) from exc


def _refused_value(exc: DataError) -> Invalid:
    # The database refused a value the checks let through (a NUL character in a string,
    # an integer past a column's range): bad input, rolled back with its transaction.
    return Invalid("a value contains a NUL character or is out of range")


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
