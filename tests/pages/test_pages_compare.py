"""The comparison page (/compare?ids=…): table, overlaid curves, parallel coordinates, exports."""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.pages.compare import parse_ids


@pytest.fixture
def two_runs(seed: Any) -> tuple[int, int]:
    first = seed.run("succeeded", name="first", points=30, hyperparameters={"lr": 0.1, "batch_size": 64})
    second = seed.run("succeeded", name="second", points=30, hyperparameters={"lr": 0.01, "batch_size": 64},
                      final_metrics={"train/loss": 0.3, "val/loss": 0.5, "train/acc": 0.9, "val/acc": 0.8,
                                     "test/acc": 0.79})
    return first, second


def test_compare_table_has_the_study_columns(client: TestClient, two_runs: tuple[int, int],
                                             html: SimpleNamespace) -> None:
    first, second = two_runs
    response = client.get(f"/compare?ids={first},{second}")
    assert response.status_code == 200
    page = response.text
    for header in ("train/loss", "val/loss", "train/acc", "val/acc", "test/acc"):
        assert f'<th scope="col" class="num">{header}</th>' in page
    assert '<th scope="col" class="setting">lr</th>' in page
    assert '<th scope="col" class="setting">batch_size</th>' not in page  # the same in both
    rows = html.table_rows(page, "compare-table")
    assert f"#{first} first" in rows[0] and f"#{second} second" in rows[1]
    assert "71.23 %" in rows[0] and "80.00 %" in rows[1] and "0.41" in rows[0]
    assert '<td class="mono setting">0.1</td>' in rows[0] and '<td class="mono setting">0.01</td>' in rows[1]


def test_compare_curves_hold_every_series(client: TestClient, two_runs: tuple[int, int],
                                          html: SimpleNamespace) -> None:
    first, second = two_runs
    page = client.get(f"/compare?ids={first},{second}").text
    figure = html.json_block(page, "compare-figure")
    traces = figure["data"]
    assert {(t["meta"]["run_id"], t["meta"]["metric"]) for t in traces} == {
        (run_id, metric) for run_id in (first, second) for metric in ("train/loss", "train/lr", "val/acc", "val/loss")}
    visible = [t for t in traces if t["visible"] is True]
    assert {t["meta"]["metric"] for t in visible} == {"val/acc"}  # the default metric
    val_acc = visible[0]
    assert val_acc["name"] == f"#{first} first"
    assert val_acc["y"][0] == pytest.approx((0.5 + 9 / 120) * 100)  # in %
    assert len(val_acc["meta"]["step"]) == len(val_acc["meta"]["time"]) == len(val_acc["x"])
    assert '<option value="val/acc" selected>' in page
    assert f'data-series-toggle="{first}"' in page and f'data-series-toggle="{second}"' in page
    for axis in ("epoch", "step", "time"):
        assert f'<option value="{axis}"' in page
    assert 'id="curve-smoothing" type="range" min="0" max="0.99"' in page


def test_compare_parcoords_plots_settings_against_val_acc(client: TestClient, two_runs: tuple[int, int],
                                                          html: SimpleNamespace) -> None:
    page = client.get("/compare?ids={},{}".format(*two_runs)).text
    parcoords = html.json_block(page, "parcoords-figure")["data"][0]
    assert parcoords["type"] == "parcoords"
    dimensions = {d["label"]: d["values"] for d in parcoords["dimensions"]}
    assert dimensions["lr"] == [0.1, 0.01]
    assert dimensions["val accuracy (%)"] == pytest.approx([71.23, 80.0])


def test_compare_parcoords_needs_two_runs_with_val_acc(client: TestClient, seed: Any) -> None:
    ids = [seed.run("succeeded"), seed.run("queued")]
    page = client.get("/compare?ids={},{}".format(*ids)).text
    assert 'id="parcoords-figure"' not in page
    assert "Needs at least two runs with a final validation accuracy" in page


def test_compare_without_metrics_says_so(client: TestClient, seed: Any) -> None:
    page = client.get(f"/compare?ids={seed.run()}").text
    assert "None of these runs has recorded metrics yet" in page


def test_compare_without_ids_offers_a_picker(client: TestClient) -> None:
    response = client.get("/compare")
    assert response.status_code == 200
    assert "Pick runs to compare" in response.text and 'name="ids"' in response.text


def test_compare_bad_ids_is_an_html_400(client: TestClient) -> None:
    response = client.get("/compare?ids=1,x")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "ids must be run ids" in response.text


def test_compare_parse_ids_accepts_lists_and_repeats() -> None:
    assert parse_ids(["1, 2", "3", "2", ""]) == [1, 2, 3]


def test_compare_export_csv(client: TestClient, seed: Any, two_runs: tuple[int, int]) -> None:
    formula = seed.run("succeeded", name="=HYPERLINK(\"http://x\")", hyperparameters={"lr": 0.5})
    ids = ",".join(map(str, [*two_runs, formula]))
    response = client.get(f"/compare/export.csv?ids={ids}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert 'attachment; filename="trainboard-comparison.csv"' == response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0])[:9] == ["id", "name", "model", "status", "train/loss", "val/loss", "train/acc", "val/acc",
                                 "test/acc"]
    assert rows[1]["name"] == "second" and rows[1]["val/acc"] == "0.8" and rows[1]["lr"] == "0.01"
    assert rows[2]["name"].startswith("'=")  # a spreadsheet must not run it as a formula


def test_compare_export_json(client: TestClient, two_runs: tuple[int, int]) -> None:
    response = client.get("/compare/export.json?ids={},{}".format(*two_runs))
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="trainboard-comparison.json"'
    body = response.json()
    assert body["differing"] == ["lr"]
    assert [row["name"] for row in body["runs"]] == ["first", "second"]
    assert body["runs"][1]["test/acc"] == 0.79


def test_compare_links_to_the_exports(client: TestClient, two_runs: tuple[int, int]) -> None:
    page = client.get("/compare?ids={},{}".format(*two_runs)).text
    assert 'href="/compare/export.csv?ids={},{}" download'.format(*two_runs) in page
    assert 'href="/compare/export.json?ids={},{}" download'.format(*two_runs) in page


def test_compare_grouped_by_a_setting_shows_mean_std_and_bands(client: TestClient, seed: Any,
                                                               html: SimpleNamespace) -> None:
    final = {"train/loss": 0.4, "val/loss": 0.6, "train/acc": 0.85}
    high = [seed.run("succeeded", name=f"high {s}", points=30, hyperparameters={"lr": 0.1, "seed": s},
                     final_metrics={**final, "val/acc": acc}) for s, acc in ((0, 0.70), (1, 0.72))]
    low = seed.run("succeeded", name="low", points=20, hyperparameters={"lr": 0.01}, final_metrics={**final, "val/acc": 0.6})
    ids = ",".join(map(str, [*high, low]))
    page = client.get(f"/compare?ids={ids}&group_by=lr").text
    rows = html.table_rows(page, "group-table")
    assert len(rows) == 2
    assert "0.1" in rows[0] and ">2<" in rows[0] and "71.00 ± 1.41 %" in rows[0]
    assert "0.01" in rows[1] and ">1<" in rows[1] and "60.00 %" in rows[1] and "±" not in rows[1].split("60.00")[1][:5]
    traces = html.json_block(page, "compare-figure")["data"]
    val_acc = {(t["meta"]["group"], t["meta"]["role"]): t for t in traces if t["meta"]["metric"] == "val/acc"}
    assert set(val_acc) == {(g, r) for g in ("lr=0.1", "lr=0.01") for r in ("lower", "upper", "mean")}
    assert val_acc[("lr=0.1", "upper")]["fill"] == "tonexty" and all(t["visible"] for t in val_acc.values())
    # The runs of lr=0.1 reach 3 evaluations and lr=0.01's 2: each band point counts the runs that reached it.
    assert [n for _, n in val_acc[("lr=0.1", "mean")]["customdata"]] == [2, 2, 2]
    assert val_acc[("lr=0.1", "mean")]["y"][0] == pytest.approx((0.5 + 9 / 120) * 100)
    assert 'id="curve-x"' not in page and "data-series-toggle" not in page  # grouped: only the metric switches
    assert '<option value="lr" selected>' in page


def test_compare_group_by_unknown_setting_400(client: TestClient, two_runs: tuple[int, int]) -> None:
    response = client.get(f"/compare?ids={two_runs[0]},{two_runs[1]}&group_by=batch_size")
    assert response.status_code == 400 and "model, lr" in response.text
    assert client.get(f"/compare?ids={two_runs[0]},{two_runs[1]}&group_by=").status_code == 200


@pytest.mark.parametrize("group_by", ["", "&group_by=lr"])
def test_compare_figure_carries_the_switch_labels(client: TestClient, two_runs: tuple[int, int],
                                                  html: SimpleNamespace, group_by: str) -> None:
    """static/compare.js relabels from the figure's layout.meta, never from its own copy of the words."""
    page = client.get("/compare?ids={},{}{}".format(*two_runs, group_by)).text
    meta = html.json_block(page, "compare-figure")["layout"]["meta"]
    assert meta["metric_labels"]["val/acc"] == "val accuracy (%)"
    assert meta["metric_labels"]["train/loss"] == "train loss"
    assert meta["x_titles"] == {"epoch": "epoch", "step": "step", "time": "wall time (s)"}
