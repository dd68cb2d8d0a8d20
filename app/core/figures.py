"""The one base layout every Plotly figure starts from, server-built figures of the services, and figure JSON.

No template and transparent backgrounds: static/charts.js adds the light or dark
theme in the browser. The pages' charts (app/pages/charts.py), the report and
the services' figures (the confusion matrix) all start from `base_layout`, so a
change of font or background is made here once.
"""

from __future__ import annotations

import json
from typing import Any

FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12}
TRANSPARENT = "rgba(0,0,0,0)"
BAR_COLOUR = "#4c78a8"


def base_layout(**overrides: Any) -> dict[str, Any]:
    """No template, transparent backgrounds, the page's font; `overrides` are set on top."""
    return {"template": "none", "paper_bgcolor": TRANSPARENT, "plot_bgcolor": TRANSPARENT, "font": dict(FONT),
            **overrides}


def titled_layout(title: str, y_title: str, x_title: str = "epoch", height: int = 320,
                  **overrides: Any) -> dict[str, Any]:
    """A chart with a left-aligned title, a legend above on the right and x-unified hover (the line charts)."""
    layout = base_layout(
        title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}},
        height=height,
        margin={"l": 64, "r": 16, "t": 44, "b": 48},
        hovermode="x unified",
        legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"},
        xaxis={"title": {"text": x_title}, "zeroline": False, "showgrid": True},
        yaxis={"title": {"text": y_title}, "zeroline": False, "showgrid": True},
    )
    layout.update(overrides)
    return layout


def figure_dict(figure: Any) -> dict[str, Any]:
    """A go.Figure as the plain {"data", "layout"} dict Plotly.newPlot takes."""
    return json.loads(figure.to_json())


def confusion_heatmap(matrix: list[list[int]], classes: list[str]) -> dict[str, Any]:
    """The matrix as a Plotly heatmap: true class down, predicted class across, counts in the cells."""
    import plotly.graph_objects as go

    figure = go.Figure(go.Heatmap(
        z=matrix, x=classes, y=classes, colorscale="Blues", texttemplate="%{z}", showscale=False, xgap=1, ygap=1,
        hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>",
    ))
    figure.update_layout(base_layout(
        xaxis={"title": {"text": "predicted class"}, "side": "bottom", "tickangle": -35, "showgrid": False},
        yaxis={"title": {"text": "true class"}, "autorange": "reversed", "showgrid": False},
        margin={"l": 96, "r": 8, "t": 8, "b": 96}, height=460,
    ))
    return figure_dict(figure)


def per_class_bar(accuracy: list[float], classes: list[str]) -> dict[str, Any]:
    """Test accuracy per class, in %, as labelled bars."""
    import plotly.graph_objects as go

    percent = [round(100 * a, 2) for a in accuracy]
    figure = go.Figure(go.Bar(x=classes, y=percent, text=[f"{p:.1f}%" for p in percent], textposition="outside",
                              hovertemplate="%{x}: %{y:.1f}%<extra></extra>", marker={"color": BAR_COLOUR},
                              cliponaxis=False))
    figure.update_layout(base_layout(
        yaxis={"title": {"text": "test accuracy (%)"}, "range": [0, 105], "showgrid": True},
        xaxis={"tickangle": -35, "showgrid": False},
        margin={"l": 64, "r": 8, "t": 24, "b": 96}, height=460,
    ))
    return figure_dict(figure)
