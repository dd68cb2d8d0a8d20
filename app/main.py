"""The FastAPI app: REST API under /api, migrations on start-up, and the lost-worker watchdog.

Run with `uvicorn app.main:app` (or `trainboard serve`). Tests build their own
app with `create_app(settings)`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI, Request
from fastapi_offline import FastAPIOffline
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlmodel import Session

from app.api.main import api_router
from app.core.config import Settings, get_settings
from app.core.db import create_db_engine, init_db
from app.core.guards import AllowedHosts, BoundedStrictBody
from app.core.security import json_safe
from app.pages import register_pages
from app.services.errors import (
    BrokerUnavailable,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    TooManyRequests,
)
from app.services.lifecycle import mark_lost_runs, prune_worker_heartbeats

logger = logging.getLogger(__name__)

# Heartbeat rows of workers silent for this many HEARTBEAT_TIMEOUT_S are deleted.
FORGET_WORKERS_AFTER_TIMEOUTS = 60


def run_watchdog_once(engine: Engine, settings: Settings) -> list[int]:
    """Fail the runs whose worker stopped sending heartbeats; forget long-gone workers."""
    with Session(engine) as session:
        lost = mark_lost_runs(session=session, timeout_s=settings.HEARTBEAT_TIMEOUT_S)
        prune_worker_heartbeats(session=session,
                                older_than_s=settings.HEARTBEAT_TIMEOUT_S * FORGET_WORKERS_AFTER_TIMEOUTS)
    if lost:
        logger.warning("watchdog: marked runs %s failed (worker lost)", lost)
    return lost


async def watchdog_loop(engine: Engine, settings: Settings) -> None:
    while True:
        try:
            await anyio.to_thread.run_sync(run_watchdog_once, engine, settings)
        except Exception:  # a database hiccup must not end the loop
            logger.exception("watchdog pass failed")
        await anyio.sleep(settings.WATCHDOG_INTERVAL_S)


class RejectCrossSiteWrites:
    """403 for a state-changing request that a browser sent from another site.

    With no API token the API is open to scripts, but a page elsewhere must not be
    able to make a visitor's browser cancel or delete runs: browsers send `Origin`
    (and `Sec-Fetch-Site`) on cross-site POST/PATCH/DELETE; scripts send neither.
    """

    SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] not in self.SAFE_METHODS and _is_cross_site(scope):
            response = JSONResponse(status_code=403, content={"detail": "cross-site request refused"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_cross_site(scope: dict[str, Any]) -> bool:
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    if headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = headers.get("origin")
    if not origin or origin == "null":
        return origin == "null"  # sandboxed frames and data: pages send "null"
    return urlsplit(origin).netloc != headers.get("host", "")


def _register_error_handlers(app: FastAPI) -> None:
    def detail(status_code: int, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        async def handler(_request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse(status_code=status_code, content={"detail": str(exc)}, headers=headers)
        return handler

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        # The rejected input is echoed back; it may be what JSON cannot encode (inf, NaN, bytes).
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(status_code=422, content={"detail": json_safe(list(exc.errors()))})

    app.add_exception_handler(RequestValidationError, validation_error)

    async def invalid_input(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidInput)
        # Body errors get FastAPI's ["body", ...] locations; query checks (sort, ids) get ["query", ...].
        prefix = ("body",) if request.method in ("POST", "PUT", "PATCH") else ("query",)
        return await app.exception_handlers[RequestValidationError](
            request, RequestValidationError(exc.as_fastapi_errors(prefix)))

    app.add_exception_handler(InvalidInput, invalid_input)
    app.add_exception_handler(NotFound, detail(404))
    app.add_exception_handler(Conflict, detail(409))
    app.add_exception_handler(Forbidden, detail(403))
    app.add_exception_handler(BrokerUnavailable, detail(503))
    app.add_exception_handler(TooManyRequests, detail(429, {"Retry-After": "10"}))


# Room for the multipart envelope around an upload of MAX_UPLOAD_BYTES.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def _add_guards(app: FastAPI, settings: Settings) -> None:
    """Middlewares, outermost last: proxy headers, Host allow-list, body limits, cross-site writes."""
    def body_limit(path: str) -> tuple[int, str]:
        if path.endswith("/visualize/activations"):
            return settings.MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES, "MAX_UPLOAD_BYTES"
        if path.rstrip("/") == "/api/datasets":  # the raw archive; its route counts it against the same limit
            return settings.DATASET_UPLOAD_MAX_BYTES, "DATASET_UPLOAD_MAX_BYTES"
        return settings.MAX_REQUEST_BODY_BYTES, "MAX_REQUEST_BODY_BYTES"

    app.add_middleware(RejectCrossSiteWrites)
    app.add_middleware(BoundedStrictBody, limit_for=body_limit)
    app.add_middleware(AllowedHosts, allowed=settings.allowed_hosts)
    if settings.FORWARDED_ALLOW_IPS:
        # Only these peers may say who the client is; the servers we start trust none themselves.
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.FORWARDED_ALLOW_IPS)


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app bound to `settings` (default: get_settings()), with its own database engine."""
    settings = settings or get_settings()
    engine = create_db_engine(settings.DATABASE_URL, echo=settings.DB_ECHO)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(settings.ensure_dirs)
        await anyio.to_thread.run_sync(init_db, engine)
        watchdog = asyncio.create_task(watchdog_loop(engine, settings))
        try:
            yield
        finally:
            watchdog.cancel()
            with suppress(asyncio.CancelledError):
                await watchdog
            engine.dispose()

    # FastAPIOffline serves Swagger UI's files from its package: /docs works with no CDN (offline).
    app = FastAPIOffline(
        title="Trainboard",
        description="Launch and inspect PyTorch CIFAR-10 trainings.",
        version="0.1.0",
        lifespan=lifespan,
    )
    _add_guards(app, settings)
    app.state.settings = settings
    app.state.engine = engine
    app.dependency_overrides[get_settings] = lambda: settings
    _register_error_handlers(app)
    app.include_router(api_router, prefix="/api")
    register_pages(app)  # pages, /static, HTML 404s outside /api
    return app


app = create_app()
