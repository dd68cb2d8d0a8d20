"""Plotly figures built on the server (plotly.graph_objects) and embedded in the pages as JSON.

The browser only draws them (static/charts.js) and extends them in place from
the live stream. Colours that depend on the light/dark theme are left to the
browser: the figures here have transparent backgrounds and no template.

Plotly renders trace names and hover text as a small subset of HTML, so user
text (run names) is HTML-escaped before it goes into a figure.

Each trace's style and the layout are built and validated with graph_objects;
the data arrays (already clean: read_metrics turns NaN into null) are attached
afterwards as plain lists. Letting plotly validate and deep-copy thousands of
values one by one made a 10-run comparison take seconds instead of ~100 ms.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go

from app.core.figures import titled_layout
from app.services.stats import mean_band

# Above this many points a series is drawn with WebGL (scattergl): SVG gets slow past a few thousand.
SCATTERGL_THRESHOLD = 3000
# Up to this many points a series gets markers too (evaluations: a handful per epoch).
MARKERS_UP_TO = 60
SPLIT_COLOURS = {"train": "#4c78a8", "val": "#f58518", "test": "#54a24b"}
OTHER_COLOUR = "#b279a2"
RUN_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6",
               "#9d755d", "#bab0ac")
X_AXES = {"epoch": "epoch", "step": "step", "time": "wall time (s)"}


@dataclass(frozen=True)
class ChartSpec:
    """One live chart of the run page: which series it shows, and how values are scaled."""

    key: str
    title: str
    y_title: str
    suffix: str  # series whose name ends with this ("/loss", "/acc", "/lr") belong here
    scale: float = 1.0  # accuracy is stored as a fraction and shown in %
    prefix: str = ""  # …and whose name starts with this ("system/")
    # System samples repeat a step (during an evaluation the step stands still): draw those too.
    repeats_steps: bool = False
    x: str = "epoch"  # a key of X_AXES

    @property
    def x_title(self) -> str:
        return X_AXES[self.x]

    def shows(self, metric: str) -> bool:
        return metric.startswith(self.prefix) and metric.endswith(self.suffix)


RUN_CHARTS = (
    ChartSpec("loss", "Loss", "cross-entropy loss", "/loss"),
    ChartSpec("acc", "Accuracy", "accuracy (%)", "/acc", scale=100.0),
    ChartSpec("lr", "Learning rate", "learning rate", "/lr"),
    # By wall time: the machine is busy while the epoch stands still (data loading, evaluations).
    ChartSpec("system", "System", "", "", prefix="system/", repeats_steps=True, x="time"),
)


@dataclass(frozen=True)
class SystemRow:
    """One row of the System chart: the system series of one unit, on a y axis of their own."""

    yaxis: str  # Plotly's trace reference: "y", "y2", …
    title: str
    suffix: str  # a system series whose name ends with this goes in this row ("" takes the rest)
    domain: tuple[float, float]


# CPU %, MiB and images/s differ by orders of magnitude: on one axis the % line lies flat at the bottom.
SYSTEM_ROWS = (
    SystemRow("y", "%", "_percent", (0.70, 1.0)),
    SystemRow("y2", "MiB", "_mib", (0.36, 0.64)),
    SystemRow("y3", "images/s", "", (0.0, 0.30)),
)
# One colour per series, so that the shared legend names each line unambiguously.
SYSTEM_COLOURS = {"system/cpu_percent": "#4c78a8", "system/gpu_util_percent": "#e45756",
                  "system/rss_mib": "#72b7b2", "system/gpu_memory_used_mib": "#f58518",
                  "system/gpu_memory_total_mib": "#bab0ac", "system/images_per_s": "#54a24b"}
SYSTEM_CHART_HEIGHT = 520


def plotly_text(text: str) -> str:
    """User text safe for Plotly's pseudo-HTML labels (shown literally)."""
    return html.escape(text, quote=True)


def is_accuracy(metric: str) -> bool:
    return metric.endswith("/acc")


METRIC_WORDS = {"acc": "accuracy (%)", "loss": "loss", "lr": "learning rate", "images_per_s": "images/s",
                "cpu_percent": "CPU (%)", "rss_mib": "RSS (MiB)", "gpu_util_percent": "GPU utilisation (%)",
                "gpu_memory_used_mib": "GPU memory used (MiB)", "gpu_memory_total_mib": "GPU memory total (MiB)"}


def metric_label(metric: str) -> str:
    """"val/acc" → "val accuracy (%)"."""
    split, _, name = metric.partition("/")
    return f"{split} {METRIC_WORDS.get(name, name)}" if name else metric


def _system_row(metric: str) -> SystemRow:
    """The System chart's row for a `system/…` series, by its unit."""
    return next(row for row in SYSTEM_ROWS if metric.endswith(row.suffix))


def _system_style(metric: str) -> dict[str, str]:
    """A system series' legend name, colour and y axis (static/run_detail.js applies the same rules,
    sent in layout.meta, to series that arrive live)."""
    name = metric.partition("/")[2]
    return {"name": METRIC_WORDS.get(name, name), "colour": SYSTEM_COLOURS.get(metric, OTHER_COLOUR),
            "yaxis": _system_row(metric).yaxis}


def _scaled(values: Sequence[float | None], scale: float) -> list[float | None]:
    if scale == 1.0:
        return list(values)
    return [None if v is None else v * scale for v in values]


def hover_template(scale: float) -> str:
    """Accuracy (scaled to %) with two decimals and a unit; anything else with four significant digits."""
    return "%{y:.2f} %" if scale == 100.0 else "%{y:.4g}"


def live_style(scale: float) -> dict[str, Any]:
    """What static/run_detail.js needs to style the traces it adds and extends live (in layout.meta),
    so that the browser never keeps its own copy of these colours and thresholds."""
    return {"split_colours": SPLIT_COLOURS, "other_colour": OTHER_COLOUR, "markers_up_to": MARKERS_UP_TO,
            "scattergl_threshold": SCATTERGL_THRESHOLD, "hover": hover_template(scale)}


def _line_trace(*, name: str, x: Sequence[float], y: Sequence[float | None], colour: str,
                total_points: int, meta: dict[str, Any], hover: str, **extra: Any) -> dict[str, Any]:
    """A line trace as a dict: style validated by graph_objects, data arrays attached as they are."""
    trace_type = go.Scattergl if total_points > SCATTERGL_THRESHOLD else go.Scatter
    style = trace_type(
        name=name, mode="lines+markers" if total_points <= MARKERS_UP_TO else "lines",
        line={"color": colour, "width": 2}, marker={"size": 5, "color": colour},
        hovertemplate=hover, connectgaps=False, **extra,
    ).to_plotly_json()
    return {**style, "x": list(x), "y": list(y), "meta": meta}


def figure_json(traces: list[dict[str, Any]], layout: dict[str, Any]) -> str:
    """{"data", "layout"} as JSON for Plotly.newPlot; the layout goes through go.Layout's validation."""
    figure = {"data": traces, "layout": go.Layout(layout).to_plotly_json()}
    return json.dumps(figure, separators=(",", ":"), allow_nan=False)


# ------------------------------------------------------------ one run's charts ---

def run_figures(series: list[dict[str, Any]]) -> dict[str, str]:
    """The run page's live charts (the study's figures 1.1 and 1.2, the learning rate and the
    machine's load), x = epoch (the System chart: wall time).

    `series` is what read_metrics returns; the result maps each RUN_CHARTS key to
    figure JSON. Every chart exists even without data, so the live stream has
    something to extend.
    """
    figures = {}
    for spec in RUN_CHARTS:
        traces = [_run_trace(spec, s) for s in series if spec.shows(s["name"])]
        layout = titled_layout(spec.title, spec.y_title, x_title=spec.x_title)
        layout["meta"] = live_style(spec.scale)
        if spec.key == "lr":
            # A constant rate would otherwise sit mid-way on an axis from -1 to 1.
            layout["yaxis"].update(exponentformat="e", rangemode="tozero")
        if spec.key == "system":
            _system_layout(layout)
        if not traces:
            _mark_empty(layout)
        figures[spec.key] = figure_json(traces, layout)
    return figures


def _run_trace(spec: ChartSpec, s: dict[str, Any]) -> dict[str, Any]:
    if spec.key == "system":
        style = _system_style(s["name"])
        name, colour, extra = style["name"], style["colour"], {"yaxis": style["yaxis"]}
    else:
        name, colour, extra = s["name"], SPLIT_COLOURS.get(s["name"].split("/", 1)[0], OTHER_COLOUR), {}
    return _line_trace(
        name=name, x=s[spec.x], y=_scaled(s["value"], spec.scale), colour=colour,
        total_points=max(s.get("total_points", 0), len(s["step"])),
        # last_step: the live stream may resend points the page already has; the JS drops those.
        meta={"metric": s["name"], "last_step": s["step"][-1] if s["step"] else -1},
        hover=hover_template(spec.scale), **extra,
    )


def _system_layout(layout: dict[str, Any]) -> None:
    """Stacked rows sharing the wall-time axis, one per unit (SYSTEM_ROWS), each starting at zero."""
    layout["height"] = SYSTEM_CHART_HEIGHT
    for row in SYSTEM_ROWS:
        layout["yaxis" + row.yaxis[1:]] = {"title": {"text": row.title}, "domain": list(row.domain), "anchor": "x",
                                           "rangemode": "tozero", "zeroline": False, "showgrid": True}
    layout["xaxis"]["anchor"] = SYSTEM_ROWS[-1].yaxis  # the time ticks under the bottom row
    # What static/run_detail.js needs to place and colour a system series that arrives live.
    layout["meta"]["system"] = {"rows": [{"suffix": row.suffix, "yaxis": row.yaxis} for row in SYSTEM_ROWS],
                                "colours": SYSTEM_COLOURS, "names": METRIC_WORDS}


def _axis_keys(layout: dict[str, Any]) -> list[str]:
    """The layout's axes: "xaxis", "yaxis", "yaxis2", …"""
    return [key for key in layout if key.startswith(("xaxis", "yaxis"))]


def _mark_empty(layout: dict[str, Any]) -> None:
    """No axes, a note instead (static/run_detail.js restores the axes when the first points arrive)."""
    for key in _axis_keys(layout):
        layout[key]["visible"] = False
    layout["annotations"] = [{"text": "No data yet", "showarrow": False, "xref": "paper", "yref": "paper",
                              "x": 0.5, "y": 0.5, "font": {"size": 14}}]


# ----------------------------------------------------------------- comparison ---

def run_label(run_id: int, name: str) -> str:
    return plotly_text(f"#{run_id} {name}")


def compare_curves_figure(runs: Sequence[Any], series_by_run: dict[int, list[dict[str, Any]]],
                          metric: str) -> str:
    """Every run's every series as one trace (the study's figure 3.3 for any metric), x = epoch.

    Only `metric`'s traces start visible; the page switches metric, x axis (step,
    epoch or wall time, kept in each trace's meta) and EMA smoothing in the browser.
    """
    traces = []
    for index, run in enumerate(runs):
        colour = RUN_COLOURS[index % len(RUN_COLOURS)]
        for s in series_by_run.get(run.id, []):
            scale = 100.0 if is_accuracy(s["name"]) else 1.0
            traces.append(_line_trace(
                name=run_label(run.id, run.name), x=s["epoch"], y=_scaled(s["value"], scale), colour=colour,
                total_points=len(s["step"]) * len(runs),  # many runs' points together: WebGL sooner
                meta={"run_id": run.id, "metric": s["name"], "scale": scale, "step": s["step"], "time": s["time"]},
                hover=hover_template(scale),
                visible=s["name"] == metric, legendgroup=str(run.id),
            ))
    layout = titled_layout(metric_label(metric), metric_label(metric), height=420)
    layout["hovermode"] = "closest"
    return figure_json(traces, layout)


def _dimension(label: str, values: list[Any]) -> dict[str, Any]:
    """A parcoords axis: numbers as they are; anything else as categories with tick labels."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return {"label": label, "values": values}
    categories = sorted({_category(v) for v in values})
    return {"label": label, "values": [categories.index(_category(v)) for v in values],
            "tickvals": list(range(len(categories))), "ticktext": [plotly_text(c) for c in categories]}


def _category(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "–" if value is None else str(value)


def parcoords_figure(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str | None:
    """Hyperparameters (`keys`) against final validation accuracy, one line per run with one.

    rows: {"settings": {key: value}, "val_acc": fraction or None}. None with fewer than two such runs.
    """
    usable = [row for row in rows if row["val_acc"] is not None]
    if len(usable) < 2:
        return None
    accuracy = [row["val_acc"] * 100 for row in usable]
    dimensions = [_dimension(key, [row["settings"].get(key) for row in usable]) for key in keys]
    dimensions.append({"label": "val accuracy (%)", "values": accuracy, "tickformat": ".1f"})
    figure = go.Parcoords(
        dimensions=dimensions,
        line={"color": accuracy, "colorscale": "Viridis", "showscale": True,
              "colorbar": {"title": {"text": "val acc %"}}},
    )
    layout = titled_layout("", "", height=380)  # the page's heading names it
    layout["margin"] = {"l": 72, "r": 72, "t": 48, "b": 32}
    return go.Figure(data=[figure], layout=layout).to_json()  # one small trace: plotly validates it all


# --------------------------------------------------------- groups over seeds ---

def _rgba(hex_colour: str, alpha: float) -> str:
    red, green, blue = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def group_bands_figure(groups: Sequence[tuple[str, Sequence[list[dict[str, Any]]]]], metric_names: Sequence[str],
                       metric: str) -> str:
    """Per group of runs (label, each run's read_metrics series) and metric: the mean over the runs
    with a mean ± std band, x = epoch. Three traces each (lower edge, upper edge filled down to it,
    mean); meta names the group, metric and role, and only `metric`'s traces start visible."""
    traces = []
    for index, (label, runs_series) in enumerate(groups):
        colour = RUN_COLOURS[index % len(RUN_COLOURS)]
        for name in metric_names:
            band = mean_band([(s["epoch"], s["value"]) for series in runs_series for s in series if s["name"] == name])
            if not band.x:
                continue
            scale = 100.0 if is_accuracy(name) else 1.0
            mean = [m * scale for m in band.mean]
            spread = [d * scale for d in band.std]
            common = {"x": band.x, "legendgroup": label, "visible": name == metric}
            edge = {"mode": "lines", "line": {"width": 0, "color": colour}, "showlegend": False, "hoverinfo": "skip"}
            traces.append({**edge, **common, "type": "scatter", "name": f"{plotly_text(label)} − std",
                           "y": [m - d for m, d in zip(mean, spread)],
                           "meta": {"group": label, "metric": name, "role": "lower"}})
            traces.append({**edge, **common, "type": "scatter", "name": f"{plotly_text(label)} + std",
                           "y": [m + d for m, d in zip(mean, spread)], "fill": "tonexty",
                           "fillcolor": _rgba(colour, 0.18),
                           "meta": {"group": label, "metric": name, "role": "upper"}})
            unit = " %" if scale == 100.0 else ""
            traces.append({**common, "type": "scatter", "mode": "lines+markers", "name": plotly_text(label),
                           "y": mean, "line": {"color": colour, "width": 2}, "marker": {"size": 4, "color": colour},
                           "customdata": [[d, n] for d, n in zip(spread, band.n)],
                           "hovertemplate": f"%{{y:.4g}} ± %{{customdata[0]:.2g}}{unit} (n=%{{customdata[1]}})",
                           "meta": {"group": label, "metric": name, "role": "mean"}})
    layout = titled_layout(f"{metric_label(metric)}: mean ± std", metric_label(metric), height=420)
    layout["hovermode"] = "closest"
    return figure_json(traces, layout)


def class_balance_figure(classes: Sequence[str], counts: dict[str, Sequence[int]]) -> str:
    """Grouped bars: images per class, one bar colour per split (the datasets page)."""
    layout = titled_layout("Images per class", "images", x_title="class", height=300)
    layout["hovermode"] = "closest"
    layout["barmode"] = "group"
    traces = [{**go.Bar(name=split, marker={"color": colour}, hovertemplate="%{x}: %{y} images<extra>" + split
                        + "</extra>").to_plotly_json(), "x": list(classes), "y": list(counts.get(split, []))}
              for split, colour in (("train", "#4c78a8"), ("test", "#f58518")) if split in counts]
    return figure_json(traces, layout)
