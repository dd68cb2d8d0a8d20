"""ASGI middlewares that guard the whole app before any route runs.

- AllowedHosts: 400 unless the Host header is in ALLOWED_HOSTS (DNS rebinding gets nowhere).
- BoundedStrictBody: 413 once a request body passes its limit, counted as it streams in (a
  chunked body has no Content-Length to trust); and 422 for a JSON body holding NaN, Infinity
  or a number too large for a float, which JSON itself does not allow and which must never be
  stored (a NaN breaks sorting) nor echoed back by an error handler.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.responses import JSONResponse, PlainTextResponse

Scope = dict[str, Any]


def host_of(header: str) -> str | None:
    """The host name of a Host header value, lower case, without port or IPv6 brackets."""
    try:
        host = urlsplit("//" + header).hostname
    except ValueError:
        return None
    return host.lower() if host else None


def host_allowed(host: str | None, allowed: list[str]) -> bool:
    if host is None:
        return False
    for pattern in allowed:
        pattern = pattern.strip("[]")
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


class AllowedHosts:
    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not host_allowed(host_of(header), self.allowed):
                response = PlainTextResponse(
                    f"Invalid Host header {header[:100]!r}: not in ALLOWED_HOSTS", status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def declared_length(header: str | bytes | None) -> int | None:
    """A request's Content-Length, or None when it is absent or not plain ASCII digits (then the body is counted)."""
    text = header.decode("latin-1") if isinstance(header, bytes) else (header or "")
    return int(text) if text.isascii() and text.isdigit() else None


class BodyTooLarge(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows; send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large for a number; send a finite number")
    return value


def non_finite_json_problem(body: bytes) -> str | None:
    """Why `body` holds a non-finite number (NaN, Infinity, 1e999), or None (also for bad JSON,
    which FastAPI reports itself)."""
    try:
        json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError as err:
        message = str(err)
        return message if "finite number" in message else None
    return None


class BoundedStrictBody:
    """413 past `limit_for(path)` bytes of body; 422 for a JSON body with a non-finite number."""

    def __init__(self, app: Any, limit_for: Callable[[str], tuple[int, str]]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit_for(scope["path"])
        too_large = PlainTextResponse(f"The request body is larger than {limit} bytes ({setting}).",
                                      status_code=413)
        headers = dict(scope["headers"])
        declared = declared_length(headers.get(b"content-length"))
        if declared is not None and declared > limit:
            await too_large(scope, receive, send)
            return
        if _may_be_parsed_as_json(headers.get(b"content-type", b"")):
            await self._json(scope, receive, send, limit, too_large)
            return
        await self._counted(scope, receive, send, limit, too_large)

    async def _json(self, scope: Scope, receive: Any, send: Any, limit: int, too_large: Any) -> None:
        """Read the whole (bounded) body, check its numbers, then hand it on as one message."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = non_finite_json_problem(body)
        if problem:
            response = JSONResponse(status_code=422, content={"detail": [
                {"type": "finite_number", "loc": ["body"], "msg": problem, "input": None}]})
            await response(scope, receive, send)
            return
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)

    async def _counted(self, scope: Scope, receive: Any, send: Any, limit: int, too_large: Any) -> None:
        received = 0
        started = False

        async def counting_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await too_large(scope, receive, send)
        except Exception as err:
            # Starlette's form parser wraps errors of receive(); find ours in the chain.
            if not _caused_by_too_large(err):
                raise
            if not started:
                await too_large(scope, receive, send)


def _may_be_parsed_as_json(content_type: bytes) -> bool:
    """What FastAPI reads as JSON: application/json, application/*+json, and (older FastAPI) no type."""
    media_type = content_type.split(b";")[0].strip().lower()
    return media_type in (b"", b"application/json") or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json"))


def _caused_by_too_large(err: BaseException | None) -> bool:
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, BodyTooLarge):
            return True
        if isinstance(err, BaseExceptionGroup) and any(_caused_by_too_large(e) for e in err.exceptions):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def _replay(messages: list[Any], receive: Any) -> Any:
    pending = list(messages)

    async def replay() -> Any:
        return pending.pop(0) if pending else await receive()
    return replay
