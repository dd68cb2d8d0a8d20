"""HTML error pages for the page routes; /api (and the static files) keep FastAPI's JSON errors."""

from __future__ import annotations

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.pages.templating import render

JSON_PREFIXES = ("/api", "/static", "/vendor", "/docs", "/redoc", "/openapi.json")


def wants_html(request: Request) -> bool:
    path = request.url.path
    return not any(path == prefix or path.startswith(prefix + "/") for prefix in JSON_PREFIXES)


async def html_or_json_http_error(request: Request, exc: Exception) -> Response:
    """404 (and other HTTP errors) of a page route as a page; anything under /api as JSON."""
    assert isinstance(exc, StarletteHTTPException)
    if not wants_html(request) or exc.status_code < 400:
        return await http_exception_handler(request, exc)
    generic = exc.detail in (None, "", "Not Found")
    context = {"status_code": exc.status_code, "message": None if generic else str(exc.detail)}
    template = "404.html" if exc.status_code == 404 else "error.html"
    response = render(request, template, context, status_code=exc.status_code)
    if exc.headers:
        response.headers.update(exc.headers)
    return response
