"""The browser pages: Jinja2 templates (templates/), small plain JS and CSS (static/).

`register_pages(app)` adds them to an app: the routers combined in `pages_router`,
/static, and HTML error pages for everything outside /api. A new page is a
router in its own module, included below; its template extends base.html and
renders through `app.pages.templating.render`, which adds the auth state, the
security headers and the CSRF cookie; embed data with the `script_json` filter
and Plotly figure JSON (`charts.run_figures`, `charts.figure_json`, or a
go.Figure's `.to_json()`) in a `<script type="application/json">` piped through it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.pages import assets, auth, compare, datasets, launch, report, runs, visualize, workers
from app.pages.errors import html_or_json_http_error
from app.pages.login_state import require_page_login
from app.pages.templating import STATIC_DIR

pages_router = APIRouter(include_in_schema=False)
# The login page and plotly.js stay open; with a token set, every other page needs a login.
for _module in (assets, auth):
    pages_router.include_router(_module.router)
for _module in (launch, runs, compare, visualize, report, workers, datasets):
    pages_router.include_router(_module.router, dependencies=[Depends(require_page_login)])


def register_pages(app: FastAPI) -> None:
    """Pages, /static and the HTML 404 page (the API under /api keeps its JSON errors)."""
    app.include_router(pages_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(StarletteHTTPException, html_or_json_http_error)


__all__ = ["pages_router", "register_pages"]
