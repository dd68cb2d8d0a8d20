"""The runs list (/) and one run's page (/runs/{id}).

Both read through app.services; everything that changes a run goes through the
REST API from the browser (static/runs_list.js, static/run_detail.js), so the
token and CSRF rules of the API apply to the pages as well.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select
from sqlmodel import Session

from app.api.deps import SessionDep, SettingsDep
from app.core.config import Settings
from app.core.db import utcnow
from app.core.security import MAX_OFFSET
from app.models import TERMINAL_STATUSES, MetricPoint, Run, RunStatus
from app.pages import charts
from app.pages.common import get_run_or_404
from app.pages.templating import render
from app.services import catalog, metrics, runs
from app.services.errors import ServiceError

router = APIRouter(tags=["pages"], include_in_schema=False)

PER_PAGE_CHOICES = (25, 50, 100, 200)
MAX_PAGE = MAX_OFFSET // max(PER_PAGE_CHOICES)
DEFAULT_PER_PAGE = 50
LIVE_STATUSES = (RunStatus.queued, RunStatus.running)
# Metrics of the final/best table, in the order the study reports them; others follow by name.
METRIC_ORDER = ("train/loss", "val/loss", "test/loss", "train/acc", "val/acc", "test/acc")


# ---------------------------------------------------------------- run helpers ---

def progress_of(run: Run) -> float | None:
    """Fraction done: steps when the total is known, else epochs against the planned epochs."""
    if run.status == RunStatus.succeeded:
        return 1.0
    if run.total_steps:
        done = run.step / run.total_steps
    elif run.hyperparameters.get("epochs"):
        done = run.epoch / run.hyperparameters["epochs"]
    else:
        return None
    return min(max(done, 0.0), 1.0)


def elapsed_s(run: Run) -> float | None:
    """The run's duration; for a running run, the time since it started."""
    if run.duration_s is not None:
        return run.duration_s
    if run.status == RunStatus.running and run.started_at:
        return (utcnow() - run.started_at).total_seconds()
    return None


def eta_s(run: Run) -> float | None:
    """Seconds left at the current training throughput (evaluation passes not included)."""
    batch = run.hyperparameters.get("batch_size")
    if run.status != RunStatus.running or not (run.total_steps and run.images_per_s and batch):
        return None
    return max(run.total_steps - run.step, 0) * batch / run.images_per_s


def is_live(run: Run) -> bool:
    return run.status in LIVE_STATUSES


# ------------------------------------------------------------------ the list ---

@dataclass(frozen=True)
class Column:
    key: str  # a sort key of runs.SORT_COLUMNS
    label: str
    first_order: str = "desc"  # numbers and times: biggest first; text: A first
    optional: bool = False  # hidden on narrow screens


LIST_COLUMNS = (
    Column("status", "Status", "asc"),
    Column("name", "Name", "asc"),
    Column("model", "Model", "asc"),
    Column("lr", "LR"),
    Column("batch_size", "Batch", optional=True),
    Column("epochs", "Epochs", optional=True),
    Column("optimizer", "Optimizer", "asc", optional=True),
    Column("best_val_acc", "Best val acc"),
    Column("test_acc", "Test acc"),
    Column("duration", "Duration"),
    Column("created_at", "Created"),
)


@dataclass(frozen=True)
class ListQuery:
    """The list's filters, sort and page, read leniently from the query string (bad values → defaults)."""

    status: str = ""
    model: str = ""
    tag: str = ""
    q: str = ""
    sort: str = "created_at"
    order: str = "desc"
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE

    @classmethod
    def from_params(cls, params: Any) -> ListQuery:
        def text(name: str, limit: int = 200) -> str:
            return (params.get(name) or "").strip()[:limit]

        sort = text("sort")
        order = text("order")
        return cls(
            status=text("status") if text("status") in set(RunStatus) else "",
            model=text("model", 64),
            tag=text("tag", 64),
            q=text("q"),
            sort=sort if sort in runs.SORT_COLUMNS else cls.sort,
            order=order if order in runs.SORT_ORDERS else cls.order,
            page=max(_int(params.get("page"), 1), 1),
            per_page=_int(params.get("per_page"), DEFAULT_PER_PAGE) if _int(params.get("per_page"), 0)
            in PER_PAGE_CHOICES else DEFAULT_PER_PAGE,
        )

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    @property
    def filtered(self) -> bool:
        return bool(self.status or self.model or self.tag or self.q)

    def url(self, **changes: Any) -> str:
        """This query with `changes`, as "/?…" keeping only non-default values."""
        values = dataclasses.asdict(dataclasses.replace(self, **changes))
        defaults = dataclasses.asdict(ListQuery())
        kept = {key: value for key, value in values.items() if value != defaults[key]}
        return "/?" + urlencode(kept) if kept else "/"

    def sort_url(self, column: Column) -> str:
        """Sorting by `column`: its first order, or the other order when it is the current sort."""
        if self.sort == column.key:
            order = "asc" if self.order == "desc" else "desc"
        else:
            order = column.first_order
        return self.url(sort=column.key, order=order, page=1)

    def aria_sort(self, column: Column) -> str:
        if self.sort != column.key:
            return "none"
        return "ascending" if self.order == "asc" else "descending"


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class Pagination:
    page: int
    pages: int
    first_item: int
    last_item: int
    total: int

    @classmethod
    def of(cls, query: ListQuery, total: int) -> Pagination:
        pages = max(math.ceil(total / query.per_page), 1)
        first = query.offset + 1 if total else 0
        return cls(query.page, pages, first, min(query.offset + query.per_page, total), total)

    def window(self, radius: int = 2) -> list[int | None]:
        """Page numbers to show: first, last, and those near the current one; None marks a gap."""
        shown = sorted({1, self.pages, *range(max(self.page - radius, 1), min(self.page + radius, self.pages) + 1)})
        result: list[int | None] = []
        for number in shown:
            if result and number - (result[-1] or 0) > 1:
                result.append(None)
            result.append(number)
        return result


def list_page_context(session: Session, query: ListQuery) -> dict[str, Any]:
    rows, total = runs.list_runs(
        session=session, status=[query.status] if query.status else None, model=query.model or None,
        q=query.q or None, tag=query.tag or None, sort=query.sort, order=query.order,
        limit=query.per_page, offset=query.offset,
    )
    from ml.models import MODELS

    return {
        "runs": rows, "query": query, "columns": LIST_COLUMNS, "pagination": Pagination.of(query, total),
        "statuses": list(RunStatus), "models": list(MODELS), "per_page_choices": PER_PAGE_CHOICES,
        "progress_of": progress_of, "elapsed_s": elapsed_s, "is_live": is_live,
    }


@router.get("/", response_class=HTMLResponse)
def runs_list_page(request: Request, session: SessionDep) -> HTMLResponse:
    query = ListQuery.from_params(request.query_params)
    if query.page > MAX_PAGE:  # the offset would overflow the database's integers
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"page must be at most {MAX_PAGE}")
    context = list_page_context(session, query)
    if query.page > context["pagination"].pages:  # past the end (e.g. after deleting): show the last page
        query = dataclasses.replace(query, page=context["pagination"].pages)
        context = list_page_context(session, query)
    return render(request, "runs_list.html", context, active="runs")


# ------------------------------------------------------------------ one run ---

def last_point_id(session: Session, run_id: int) -> int:
    """The newest metric point's id: the live stream continues after it."""
    return session.scalar(select(func.max(MetricPoint.id)).where(MetricPoint.run_id == run_id)) or 0


def metric_table(run: Run) -> list[tuple[str, float | None, float | None]]:
    """(name, final, best) rows, in the study's order, then the rest by name."""
    names = set(run.final_metrics) | set(run.best_metrics)
    ordered = [name for name in METRIC_ORDER if name in names] + sorted(names - set(METRIC_ORDER))
    return [(name, run.final_metrics.get(name), run.best_metrics.get(name)) for name in ordered]


def hyperparameter_rows(run: Run) -> list[tuple[str, Any, str]]:
    """(name, value, help) in TrainConfig's field order; keys TrainConfig lacks come last."""
    from ml.config import TrainConfig

    known = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}
    names = [name for name in known if name in run.hyperparameters]
    names += sorted(set(run.hyperparameters) - set(known))
    return [(name, run.hyperparameters[name], known.get(name, "")) for name in names]


def layer_rows(run: Run) -> tuple[list[dict[str, Any]], str | None]:
    """The model's per-layer parameter table (the study's task 1c), or an error message."""
    try:
        return catalog.model_layers(run.model, run.hyperparameters.get("model_options") or {}), None
    except Exception as err:  # noqa: BLE001 - a model that no longer builds must not break the page
        return [], f"the layer table is unavailable: {err}"


def has_checkpoint(session: Session, run: Run, settings: Settings) -> bool:
    if not run.checkpoint_path:
        return False
    try:
        runs.checkpoint_file(session=session, run_id=run.id, settings=settings)
    except ServiceError:
        return False
    return True


def run_page_context(session: Session, run: Run, settings: Settings) -> dict[str, Any]:
    # Read first: a point added meanwhile is sent twice (the JS drops it), never lost.
    after_id = last_point_id(session, run.id)
    series = metrics.read_metrics(session=session, run_id=run.id, max_points=settings.METRICS_MAX_POINTS)
    figures = charts.run_figures(series)
    layers, layers_error = layer_rows(run)
    return {
        "run": run,
        "events": runs.list_events(session=session, run_id=run.id),
        "charts": [(spec, figures[spec.key]) for spec in charts.RUN_CHARTS],
        "last_point_id": after_id,
        "hyperparameters": hyperparameter_rows(run),
        "metrics": metric_table(run),
        "metric_order": METRIC_ORDER,
        "layers": layers,
        "layers_total": sum(row["parameters"] for row in layers),
        "layers_error": layers_error,
        "progress": progress_of(run),
        "elapsed_s": elapsed_s(run),
        "eta_s": eta_s(run),
        "live": is_live(run),
        "has_checkpoint": has_checkpoint(session, run, settings),
        "terminal": run.status in TERMINAL_STATUSES,
    }


@router.get("/runs/{run_id:int}", response_class=HTMLResponse)
def run_page(run_id: int, request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    run = get_run_or_404(session, run_id)
    return render(request, "run_detail.html", run_page_context(session, run, settings), active="runs")
