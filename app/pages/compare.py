"""The comparison page (/compare?ids=1,2,3) and its CSV/JSON exports.

The table is the study's: final train/val loss, train/val/test accuracy per
run, plus the settings that differ between the runs. The curves overlay any
metric of every run (the study's figure 3.3); static/compare.js switches the
metric, the x axis and the EMA smoothing in the browser.

With ?group_by=<setting> (model, lr, …) the runs that share that setting's value
form one group, typically the seeds of one configuration: the table shows each
group's mean ± std, and the curves each group's mean with a ± std band. The groups
come from app/services/grouping.py, as GET /api/compare?group_by= does.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session

from app.api.deps import SessionDep
from app.core.security import parse_id_list
from app.models import Run
from app.pages import charts
from app.pages.common import not_found
from app.pages.templating import fmt_value, render
from app.services import metrics, runs
from app.services.errors import InvalidInput, NotFound
from app.services.grouping import TABLE_METRICS, RunGroup, grouping_keys, setting_of

router = APIRouter(tags=["pages"], include_in_schema=False)

DEFAULT_METRICS = ("val/acc", "val/loss", "train/loss")
# Per series and run: with 10 runs and ~8 series each, the page stays around a megabyte.
COMPARE_MAX_POINTS = 600
PARCOORDS_FALLBACK_KEYS = ("lr", "batch_size", "epochs")
# The x axes static/compare.js switches between (each trace's meta holds the step and time columns).
X_AXIS_TITLES = {"epoch": "epoch", "step": "step", "time": "wall time (s)"}
MAX_PARCOORDS_DIMENSIONS = 12


def parse_ids(raw_values: list[str]) -> list[int]:
    """"1,2,3" (or ids=1&ids=2) → [1, 2, 3]; a non-number is a 400."""
    ids = parse_id_list(raw_values)
    if ids is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "ids must be run ids separated by commas, e.g. 1,2,3")
    return list(dict.fromkeys(ids))


@dataclass(frozen=True)
class Comparison:
    runs: list[Run]
    differing: list[str]
    group_by: str | None = None
    groups: list[RunGroup] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per run: identity, final metrics, then the differing settings (for exports)."""
        return [{
            "id": run.id, "name": run.name, "model": run.model, "status": run.status,
            **{metric: run.final_metrics.get(metric) for metric in TABLE_METRICS},
            **{key: setting_of(run, key) for key in self.differing if key != "model"},
        } for run in self.runs]


def load_comparison(session: Session, ids: list[int], group_by: str | None = None) -> Comparison:
    """The runs, grouped by `group_by` when given (empty means no grouping); an unknown run is a 404,
    too many runs or an unknown group_by a 400."""
    try:
        result = runs.compare_runs(session=session, run_ids=ids, group_by=group_by)
    except NotFound as err:
        raise not_found(str(err)) from None
    except InvalidInput as err:
        # With the field named: "group_by: must be one of: model, lr".
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(err)) from None
    return Comparison(runs=result["runs"], differing=result["differing"], group_by=result["group_by"],
                      groups=result["groups"])


def _default_metric(names: list[str]) -> str:
    return next((name for name in DEFAULT_METRICS if name in names), names[0] if names else "val/acc")


def with_switch_labels(figure_json: str, metric_names: list[str]) -> str:
    """The figure with the words static/compare.js needs when it switches metric or x axis (in
    layout.meta), so the browser never keeps its own copy of the server's labels."""
    figure = json.loads(figure_json)
    figure["layout"]["meta"] = {
        "metric_labels": {name: charts.metric_label(name) for name in metric_names},
        "x_titles": X_AXIS_TITLES,
    }
    return json.dumps(figure, separators=(",", ":"), allow_nan=False)


def compare_page_context(session: Session, comparison: Comparison) -> dict[str, Any]:
    # read_metrics commits, which would expire the loaded runs and reload each one on next use.
    for run in comparison.runs:
        session.expunge(run)
    series_by_run = {run.id: metrics.read_metrics(session=session, run_id=run.id, max_points=COMPARE_MAX_POINTS)
                     for run in comparison.runs}
    metric_names = sorted({s["name"] for series in series_by_run.values() for s in series})
    metric = _default_metric(metric_names)
    keys = [key for key in comparison.differing if key != "model_options"] or list(PARCOORDS_FALLBACK_KEYS)
    parcoords = charts.parcoords_figure(
        [{"settings": {key: setting_of(run, key) for key in keys}, "val_acc": run.final_metrics.get("val/acc")}
         for run in comparison.runs],
        keys[:MAX_PARCOORDS_DIMENSIONS],
    )
    group_by, groups = comparison.group_by, comparison.groups
    if groups:
        curves = charts.group_bands_figure(
            [(f"{group_by}={fmt_value(group.value)}", [series_by_run[run.id] for run in group.runs])
             for group in groups], metric_names, metric)
    else:
        curves = charts.compare_curves_figure(comparison.runs, series_by_run, metric)
    return {
        "comparison": comparison,
        "group_by": group_by,
        "groups": groups,
        "grouping_keys": grouping_keys(comparison.differing),
        "table_metrics": TABLE_METRICS,
        "setting_of": setting_of,
        "metric_names": metric_names,
        "metric": metric,
        "metric_label": charts.metric_label,
        "curves_json": with_switch_labels(curves, metric_names),
        "parcoords_json": parcoords,
        "colours": {run.id: charts.RUN_COLOURS[i % len(charts.RUN_COLOURS)] for i, run in enumerate(comparison.runs)},
        "colours_by_index": [charts.RUN_COLOURS[i % len(charts.RUN_COLOURS)] for i in range(len(groups))],
        "ids_param": ",".join(str(run.id) for run in comparison.runs),
    }


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep) -> HTMLResponse:
    ids = parse_ids(request.query_params.getlist("ids"))
    if not ids:
        return render(request, "compare.html", {"comparison": None}, active="compare")
    comparison = load_comparison(session, ids, request.query_params.get("group_by"))
    return render(request, "compare.html", compare_page_context(session, comparison), active="compare")


# -------------------------------------------------------------------- exports ---

def _csv_cell(value: Any) -> Any:
    """Lists and objects as JSON; text that a spreadsheet would run as a formula gets a leading '."""
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def comparison_csv(comparison: Comparison) -> str:
    rows = comparison.rows()
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["id"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_cell(value) for key, value in row.items()})
    return out.getvalue()


def _download(content: str, media_type: str, filename: str) -> Response:
    return Response(content, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/compare/export.csv")
def compare_csv(request: Request, session: SessionDep) -> Response:
    comparison = load_comparison(session, parse_ids(request.query_params.getlist("ids")))
    return _download(comparison_csv(comparison), "text/csv; charset=utf-8", "trainboard-comparison.csv")


@router.get("/compare/export.json")
def compare_json(request: Request, session: SessionDep) -> Response:
    comparison = load_comparison(session, parse_ids(request.query_params.getlist("ids")))
    body = json.dumps({"runs": comparison.rows(), "differing": comparison.differing}, indent=2, default=str)
    return _download(body, "application/json", "trainboard-comparison.json")
