"""Jinja2 environment, formatting filters and the `render` helper shared by every page.

Autoescape is on for every template, and data that goes into a <script> goes
through `script_json` (a JSON data block with <, > and & escaped), so user text
(run names, tags, notes) can never become markup or script.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import plotly
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from app.pages import login_state

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = REPO_ROOT / "templates"
STATIC_DIR = REPO_ROOT / "static"
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
# Versioned, so browsers may cache it for good (a plotly upgrade changes the URL).
PLOTLY_URL = f"/vendor/plotly-{plotly.__version__}.min.js"

# Defence in depth behind escaping: no inline script or event handler can run.
# 'unsafe-eval': Plotly's WebGL traces (scattergl) compile their shaders' glue code at run time;
# 'unsafe-inline' styles: Plotly writes style attributes and a <style> element.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
NAV_ITEMS = (("runs", "/", "Runs"), ("launch", "/runs/new", "Launch"), ("compare", "/compare", "Compare"),
             ("report", "/report", "Report"), ("datasets", "/datasets", "Datasets"), ("workers", "/workers", "Workers"))


# ------------------------------------------------------------------ filters ---

def worker_anchor(hostname: str, pid: int | None) -> str:
    """The id of a worker's row on /workers, which the run page links to (/workers#worker-…)."""
    safe = "".join(char if char.isalnum() or char in "-_." else "-" for char in hostname)
    return f"worker-{safe}-{pid}"


def script_json(data: Any) -> Markup:
    """JSON safe inside <script type="application/json">: no "</script>", no HTML entities, no U+2028."""
    text = data if isinstance(data, str) else json.dumps(data, default=str, allow_nan=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return Markup(text)  # noqa: S704 - every character that could end the block is escaped above


def fmt_percent(fraction: float | None, digits: int = 2) -> str:
    """0.8123 → "81.23 %"; accuracies are stored as fractions and shown as percentages."""
    if fraction is None or not math.isfinite(fraction):
        return "–"
    return f"{fraction * 100:.{digits}f} %"


def fmt_number(value: float | int | None, digits: int = 4) -> str:
    """Compact: integers with thousands separators, floats to `digits` significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def fmt_duration(seconds: float | None) -> str:
    """3725 → "1 h 02 min"; 75 → "1 min 15 s"."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24} d {hours % 24:02d} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def fmt_datetime(value: datetime | None) -> str:
    """UTC, to the minute; the pages' JS swaps in the viewer's local time."""
    if value is None:
        return "–"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def fmt_value(value: Any) -> str:
    """A hyperparameter or dataset value as text (lists joined, None as a dash)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return fmt_number(value, 6)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def fmt_metric(name: str, value: float | None) -> str:
    """Accuracies as percentages, everything else as a number."""
    return fmt_percent(value) if name.endswith("/acc") else fmt_number(value)


def fmt_mean_std(summary: Any, name: str) -> str:
    """A stats.Summary of metric `name`: "75.12 ± 0.43 %" or "0.5447 ± 0.0123" (no ± below two runs)."""
    if summary is None or summary.mean is None:
        return "–"
    scale, unit, fmt = (100.0, " %", ".2f") if name.endswith("/acc") else (1.0, "", ".4f")
    spread = f" ± {summary.std * scale:{fmt}}" if summary.std is not None else ""
    return f"{summary.mean * scale:{fmt}}{spread}{unit}"


@lru_cache(maxsize=64)
def _file_version(path: Path, mtime_ns: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def static_url(name: str) -> str:
    """/static/<name>?v=<content hash>, so a changed file is never served stale from a cache."""
    path = STATIC_DIR / name
    try:
        version = _file_version(path, path.stat().st_mtime_ns)
    except OSError:
        version = "missing"
    return f"/static/{name}?v={version}"


def _build_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every template, whatever its extension
        undefined=StrictUndefined,  # a typo in a template is an error, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(percent=fmt_percent, number=fmt_number, duration=fmt_duration,
                       datetime=fmt_datetime, value=fmt_value, metric=fmt_metric, script_json=script_json,
                       mean_std=fmt_mean_std)
    env.globals.update(static_url=static_url, plotly_url=PLOTLY_URL, nav_items=NAV_ITEMS, worker_anchor=worker_anchor)
    return env


templates = Jinja2Templates(env=_build_environment())


def render(request: Request, template: str, context: dict[str, Any] | None = None, *,
           status_code: int = 200, active: str | None = None) -> HTMLResponse:
    """The template rendered with the context every page needs (auth state, active nav item)."""
    state = login_state.auth_state(request)
    page_context = {"request": request, "auth": state, "active": active, **(context or {})}
    response = templates.TemplateResponse(request, template, page_context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    login_state.ensure_csrf_cookie(request, response, state)
    return response
