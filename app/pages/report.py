"""/report: the CIFAR-10 study reproduced, and /report/download: the same page as one offline file.

For each study preset (task1, net1, net2, resnet18) the latest succeeded run is
shown beside the reference numbers of app.services.report, with its curves, a
fig 3.3-style overlay of every preset's losses, and the visualisations of one
run (resnet18's, else the best test accuracy).

On /report the visualisations load through /api/runs/{id}/visualize/* (a
confusion matrix over the test set takes a while the first time). The download
computes them on the server and inlines everything (CSS, plotly.min.js, the
page's JS, the figures as JSON and the images as data: URIs), so the file
needs no server and no network.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any

import plotly.graph_objects as go
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup
from sqlmodel import Session

from app.api.deps import SessionDep, SettingsDep
from app.core.config import Settings
from app.core.figures import titled_layout
from app.models import Run
from app.pages import charts
from app.pages.templating import PLOTLY_JS, STATIC_DIR, render, templates
from app.services import report, visualize
from app.services.errors import ServiceError
from app.services.metrics import read_metrics

router = APIRouter(tags=["pages"], include_in_schema=False)

CURVE_METRICS = ("train/loss", "val/loss", "test/loss", "train/acc", "val/acc", "test/acc")
CURVE_MAX_POINTS = 400  # evaluations: a handful per epoch, so nothing is lost
PRESET_COLOURS = dict(zip(report.STUDY_PRESETS, charts.RUN_COLOURS))
INLINE_CSS = ("app.css", "visualize.css")
INLINE_JS = ("app.js", "charts.js", "report.js")
# Which data set the mean ± std over seeds is for (a report.dataset_label); the latest one by default.
DatasetQuery = Annotated[str | None, Query(max_length=2000)]


# ------------------------------------------------------------------ figures ---

def _curves(session: Session, run: Run) -> list[dict[str, Any]]:
    return read_metrics(session=session, run_id=run.id, names=list(CURVE_METRICS), max_points=CURVE_MAX_POINTS)


def loss_comparison_figure(series_by_preset: dict[str, list[dict[str, Any]]]) -> go.Figure:
    """Every preset's train loss (dashed) and val loss (solid) against the epoch: the study's fig 3.3."""
    traces = []
    for preset, series in series_by_preset.items():
        for s in series:
            if s["name"] not in ("train/loss", "val/loss"):
                continue
            traces.append(go.Scatter(
                x=s["epoch"], y=s["value"], name=f"{preset} {s['name']}", mode="lines+markers",
                line={"color": PRESET_COLOURS[preset], "width": 2, "dash": "dash" if s["name"] == "train/loss" else "solid"},
                marker={"size": 4}, hovertemplate="%{y:.4f}", legendgroup=preset,
            ))
    layout = titled_layout(
        "Loss per epoch: train (dashed) and validation (solid)", "cross-entropy loss", height=420,
        legend={"orientation": "h", "x": 1, "xanchor": "right", "y": -0.18, "yanchor": "top"},
        xaxis={"title": {"text": "epoch"}, "zeroline": False},
        yaxis={"title": {"text": "cross-entropy loss"}, "zeroline": False},
    )
    return go.Figure(data=traces, layout=layout)


def preset_sections(session: Session, results: list[report.PresetResult]) -> tuple[list[dict[str, Any]], go.Figure]:
    """Per preset: its result, its run's loss and accuracy charts; plus the losses of all presets overlaid."""
    sections, series_by_preset = [], {}
    for result in results:
        figures = None
        if result.run is not None:
            series = _curves(session, result.run)
            series_by_preset[result.preset] = series
            drawn = charts.run_figures(series)
            figures = {"loss": drawn["loss"], "acc": drawn["acc"]}  # run_figures returns figure JSON
        sections.append({"result": result, "figures": figures, "colour": PRESET_COLOURS[result.preset]})
    return sections, loss_comparison_figure(series_by_preset)


# ----------------------------------------------------------- visualisations ---

def embedded_visuals(session: Session, run: Run, settings: Settings) -> dict[str, Any]:
    """The showcase run's filters, one test image's feature maps and the confusion matrix, computed now.

    A failure (no dataset on this machine, a missing checkpoint) becomes a message in the file.
    """
    try:
        info = visualize.info(session=session, run_id=run.id, settings=settings)
        filters = visualize.filter_grid_png(session=session, run_id=run.id, settings=settings)
        activations = visualize.test_image_activations(session=session, run_id=run.id, settings=settings,
                                                       class_name=info.classes[0], index=0)
        confusion = visualize.confusion(session=session, run_id=run.id, settings=settings)
    except (ServiceError, OSError, RuntimeError, ValueError) as err:  # DatasetError is a RuntimeError
        return {"error": str(err)}
    return {"filters": visualize.png_data_uri(filters), "activations": activations.model_dump(),
            "confusion": confusion.model_dump()}


# ------------------------------------------------------------------ context ---

def report_context(session: Session, settings: Settings, *, standalone: bool,
                   dataset: str | None = None) -> dict[str, Any]:
    results = report.study_results(session)
    seeds = report.seed_study(session, dataset)
    sections, loss_figure = preset_sections(session, results)
    showcase = report.showcase_run(results)
    visuals: dict[str, Any] = {}
    if showcase is not None:
        visuals = {"run_id": showcase.id}
        if standalone:
            visuals.update(embedded_visuals(session, showcase, settings))
    return {
        "sections": sections, "reference_sets": report.REFERENCE_SETS, "metrics": report.REPORT_METRICS,
        "loss_figure": loss_figure.to_json() if any(s["figures"] for s in sections) else None,
        "showcase": showcase, "visuals": visuals, "standalone": standalone,
        "seeds": seeds, "study_presets": report.STUDY_PRESETS,
        "generated_at": datetime.now(timezone.utc),
    }


# -------------------------------------------------------------- standalone ---

_SCRIPT_END = re.compile(r"</(script)", re.IGNORECASE)


def inline_script(source: str) -> Markup:
    """JS safe inside an inline <script>: "</script" cannot appear, so the element cannot end early."""
    return Markup(_SCRIPT_END.sub(r"<\\/\1", source))  # noqa: S704 - the only sequence that ends the element


def inline_style(source: str) -> Markup:
    return Markup(re.sub(r"</(style)", r"<\\/\1", source, flags=re.IGNORECASE))  # noqa: S704


def inline_assets() -> dict[str, Markup]:
    """CSS and JS (plotly.min.js first) as text for the standalone file."""
    css = "\n".join((STATIC_DIR / name).read_text(encoding="utf-8") for name in INLINE_CSS)
    scripts = [PLOTLY_JS.read_text(encoding="utf-8")]
    scripts += [(STATIC_DIR / name).read_text(encoding="utf-8") for name in INLINE_JS if (STATIC_DIR / name).is_file()]
    return {"inline_css": inline_style(css), "inline_scripts": [inline_script(s) for s in scripts]}


def standalone_html(session: Session, settings: Settings, dataset: str | None = None) -> str:
    context = report_context(session, settings, standalone=True, dataset=dataset)
    return templates.get_template("report.html").render(**context, **inline_assets())


# ------------------------------------------------------------------- routes ---

@router.get("/report", response_class=HTMLResponse)
def report_page(request: Request, session: SessionDep, settings: SettingsDep,
                dataset: DatasetQuery = None) -> HTMLResponse:
    context = report_context(session, settings, standalone=False, dataset=dataset)
    return render(request, "report.html", context, active="report")


@router.get("/report/download", response_class=HTMLResponse)
def report_download(session: SessionDep, settings: SettingsDep, dataset: DatasetQuery = None) -> HTMLResponse:
    """The report as one HTML file that works offline (served as an attachment)."""
    filename = f"trainboard-report-{datetime.now(timezone.utc):%Y%m%d-%H%M}.html"
    return HTMLResponse(standalone_html(session, settings, dataset),
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})
