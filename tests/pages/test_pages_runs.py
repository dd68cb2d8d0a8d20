"""The runs list (/) and one run's page (/runs/{id}): content per status, filters, sort, pages, 404s."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.core.config import Settings
from app.models import Run, RunStatus
from app.pages import charts
from app.pages.runs import METRIC_ORDER, ListQuery, Pagination


# ------------------------------------------------------------------ the list ---

def test_runs_list_empty_offers_launch(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "No runs yet" in response.text and 'href="/runs/new"' in response.text


def test_runs_list_shows_each_status(client: TestClient, seed: Any, html: SimpleNamespace) -> None:
    ids = seed.one_of_each_status()
    page = client.get("/").text
    for status, run_id in ids.items():
        row = next(row for row in html.table_rows(page, "runs-table") if f'data-run-id="{run_id}"' in row)
        assert f'class="badge badge-{status}"' in row
        assert f'href="/runs/{run_id}"' in row and f"{status}-run" in row
    running_row = next(r for r in html.table_rows(page, "runs-table") if f'data-run-id="{ids["running"]}"' in r)
    assert 'role="progressbar"' in running_row and 'aria-valuenow="30.0"' in running_row  # step 30 of 100
    succeeded_row = next(r for r in html.table_rows(page, "runs-table") if f'data-run-id="{ids["succeeded"]}"' in r)
    assert "70.00 %" in succeeded_row and "70.11 %" in succeeded_row  # best val acc, test acc
    assert 'role="progressbar"' not in succeeded_row


def test_runs_list_columns_show_hyperparameters(client: TestClient, seed: Any) -> None:
    seed.run(hyperparameters={"lr": 0.0123, "batch_size": 32, "epochs": 7, "optimizer": "adam"})
    page = client.get("/").text
    for text in ("0.0123", ">32<", ">7<", ">adam<"):
        assert text in page


@pytest.mark.parametrize("query, expected", [
    ("status=failed", ["failed-run"]),
    ("status=running", ["running-run"]),
    ("model=net1", ["net1-run"]),
    ("tag=special", ["tagged-run"]),
    ("q=NOTE-me", ["noted-run"]),
    ("q=net1-", ["net1-run"]),
])
def test_runs_list_filters_narrow_the_rows(client: TestClient, seed: Any, query: str, expected: list[str]) -> None:
    seed.one_of_each_status()
    seed.run(name="net1-run", model="net1")
    seed.run(name="tagged-run", tags=["special"])
    seed.run(name="noted-run", notes="please note-me later")
    page = client.get(f"/?{query}").text
    shown = [name for name in ("queued-run", "running-run", "succeeded-run", "failed-run", "cancelled-run",
                               "net1-run", "tagged-run", "noted-run") if f">{name}<" in page]
    assert shown == expected


def test_runs_list_filter_form_keeps_values(client: TestClient) -> None:
    page = client.get("/?status=failed&model=net2&tag=t1&q=abc").text
    assert '<option value="failed" selected>' in page
    assert '<option value="net2" selected>' in page
    assert 'name="tag" value="t1"' in page and 'name="q" value="abc"' in page
    assert "No runs match these filters" in page


def test_runs_list_sort_by_name_sets_aria_sort(client: TestClient, seed: Any, html: SimpleNamespace) -> None:
    ids = {name: seed.run(name=name) for name in ("bravo", "alpha", "charlie")}
    page = client.get("/?sort=name&order=asc").text
    assert html.run_ids(page) == [ids["alpha"], ids["bravo"], ids["charlie"]]
    headers = {attrs["class"].split()[0]: attrs["aria-sort"]
               for attrs in html.elements(page, "th") if attrs.get("aria-sort")}
    assert headers["col-name"] == "ascending"
    assert headers["col-created_at"] == "none"
    # The header link of the current sort column flips the order.
    assert 'href="/?sort=name"' in page  # desc is the default order, so only sort is kept
    descending = client.get("/?sort=name&order=desc").text
    assert html.run_ids(descending) == [ids["charlie"], ids["bravo"], ids["alpha"]]


@pytest.mark.parametrize("sort", ["lr", "batch_size", "epochs", "optimizer", "best_val_acc", "test_acc",
                                  "duration", "status", "model", "created_at"])
def test_runs_list_sorts_by_every_column(client: TestClient, seed: Any, html: SimpleNamespace, sort: str) -> None:
    small = seed.run(hyperparameters={"lr": 0.01, "batch_size": 16, "epochs": 2, "optimizer": "adam"})
    large = seed.run(hyperparameters={"lr": 0.5, "batch_size": 256, "epochs": 20, "optimizer": "sgd"})
    response = client.get(f"/?sort={sort}&order=asc")
    assert response.status_code == 200
    if sort in ("lr", "batch_size", "epochs", "optimizer"):
        assert html.run_ids(response.text) == [small, large]
        assert html.run_ids(client.get(f"/?sort={sort}&order=desc").text) == [large, small]


def test_runs_list_paginates(client: TestClient, seed: Any, html: SimpleNamespace) -> None:
    ids = [seed.run(name=f"run-{i:02d}") for i in range(30)]
    first = client.get("/?per_page=25&sort=name&order=asc").text
    assert html.run_ids(first) == ids[:25]
    assert "1–25 of 30" in first
    assert 'href="/?sort=name&amp;order=asc&amp;page=2&amp;per_page=25" rel="next"' in first
    second = client.get("/?per_page=25&sort=name&order=asc&page=2").text
    assert html.run_ids(second) == ids[25:]
    assert "26–30 of 30" in second and 'rel="prev"' in second


def test_runs_list_page_past_the_end_shows_the_last(client: TestClient, seed: Any, html: SimpleNamespace) -> None:
    run_id = seed.run()
    assert html.run_ids(client.get("/?page=99").text) == [run_id]


def test_runs_list_bad_query_values_fall_back(client: TestClient, seed: Any) -> None:
    seed.run()
    response = client.get("/?sort=password&order=sideways&page=abc&per_page=7&status=bogus")
    assert response.status_code == 200
    assert 'aria-sort="descending" class="col-created_at' in response.text


def test_list_query_url_keeps_only_non_defaults() -> None:
    query = ListQuery.from_params({"status": "running", "sort": "lr", "order": "asc", "page": "3"})
    assert query.url() == "/?status=running&sort=lr&order=asc&page=3"
    assert query.url(page=1, status="") == "/?sort=lr&order=asc"
    assert ListQuery().url() == "/"


def test_pagination_window_marks_gaps() -> None:
    assert Pagination.of(ListQuery(page=10, per_page=25), 1000).window() == [1, None, 8, 9, 10, 11, 12, None, 40]
    assert Pagination.of(ListQuery(), 0).window() == [1]


# ------------------------------------------------------------------ one run ---

@pytest.mark.parametrize("status", list(RunStatus))
def test_run_page_each_status(client: TestClient, seed: Any, html: SimpleNamespace, status: RunStatus) -> None:
    run_id = seed.run(status, name=f"my {status.value} run", points=30)
    response = client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    page = response.text
    assert f"<h1 id=\"run-name\">my {status.value} run</h1>" in page
    assert f'class="badge badge-{status.value}"' in page
    data = html.json_block(page, "run-data")
    assert data["id"] == run_id and data["status"] == status.value
    assert data["live"] is (status in (RunStatus.queued, RunStatus.running))
    assert f'href="/runs/new?clone={run_id}"' in page and f'href="/runs/{run_id}/visualize"' in page
    cancel = next(attrs for attrs in html.elements(page, "button") if attrs.get("id") == "cancel-run")
    assert ("hidden" in cancel) is (status not in (RunStatus.queued, RunStatus.running))
    error_card = next(attrs for attrs in html.elements(page, "section") if attrs.get("id") == "error-card")
    assert ("hidden" in error_card) is (status != RunStatus.failed)


def test_run_page_failed_shows_the_whole_error(client: TestClient, seed: Any) -> None:
    error = "Traceback (most recent call last):\n  line <1>\nValueError: x & y"
    page = client.get(f"/runs/{seed.run(RunStatus.failed, error=error)}").text
    escaped = "Traceback (most recent call last):\n  line &lt;1&gt;\nValueError: x &amp; y"
    assert f'<pre class="error-text" id="error-text">{escaped}</pre>' in page


def test_run_page_running_shows_progress_and_eta(client: TestClient, seed: Any) -> None:
    page = client.get(f"/runs/{seed.run(RunStatus.running)}").text
    assert 'aria-valuenow="30.0"' in page  # step 30 of 100
    assert '<dd data-field="step">30 / 100</dd>' in page
    assert '<dd data-field="images_per_s">1234</dd>' in page
    # 70 steps × 64 images / 1234.5 images/s ≈ 3.6 s
    assert '<dd data-field="eta">4 s</dd>' in page


def test_run_page_succeeded_shows_final_and_best_metrics(client: TestClient, seed: Any, html: SimpleNamespace) -> None:
    page = client.get(f"/runs/{seed.run(RunStatus.succeeded, best_metrics={'val/acc': 0.75})}").text
    rows = html.table_rows(page, "compact")  # the metrics table comes first
    assert [row.split("</th>")[0].rsplit(">", 1)[1] for row in rows] == [
        "train/loss", "val/loss", "train/acc", "val/acc", "test/acc"]
    val_acc = next(row for row in rows if ">val/acc<" in row)
    assert "71.23 %" in val_acc and "75.00 %" in val_acc


def test_run_page_charts_are_server_figures(client: TestClient, seed: Any, html: SimpleNamespace) -> None:
    page = client.get(f"/runs/{seed.run(RunStatus.running, points=30)}").text
    loss = html.json_block(page, "figure-loss")
    assert {trace["name"] for trace in loss["data"]} == {"train/loss", "val/loss"}
    train_loss = next(trace for trace in loss["data"] if trace["name"] == "train/loss")
    assert train_loss["type"] == "scatter" and train_loss["x"][:2] == [0.0, 0.1]  # x = epoch
    assert train_loss["meta"] == {"metric": "train/loss", "last_step": 29}
    accuracy = html.json_block(page, "figure-acc")
    val_acc = accuracy["data"][0]
    assert val_acc["name"] == "val/acc" and val_acc["y"][0] == pytest.approx((0.5 + 9 / 120) * 100)  # in %
    assert accuracy["layout"]["yaxis"]["title"]["text"] == "accuracy (%)"
    assert html.json_block(page, "figure-lr")["data"][0]["name"] == "train/lr"
    assert html.json_block(page, "run-data")["last_point_id"] > 0  # the live stream continues from here


def test_run_page_empty_charts_exist_for_the_stream(client: TestClient, seed: Any, html: SimpleNamespace) -> None:
    page = client.get(f"/runs/{seed.run()}").text
    for key in ("loss", "acc", "lr"):
        figure = html.json_block(page, f"figure-{key}")
        assert figure["data"] == []
        assert figure["layout"]["annotations"][0]["text"] == "No data yet"
    assert html.json_block(page, "run-data")["last_point_id"] == 0


def test_run_page_figures_carry_what_the_live_chart_js_needs(client: TestClient, seed: Any,
                                                           html: SimpleNamespace) -> None:
    """static/run_detail.js styles the traces it adds live from layout.meta and orders the metrics
    table from run-data: the server's values, not copies kept in the JS."""
    page = client.get(f"/runs/{seed.run()}").text
    loss_style = html.json_block(page, "figure-loss")["layout"]["meta"]
    assert loss_style["split_colours"] == charts.SPLIT_COLOURS and loss_style["other_colour"] == charts.OTHER_COLOUR
    assert loss_style["markers_up_to"] == charts.MARKERS_UP_TO
    assert loss_style["scattergl_threshold"] == charts.SCATTERGL_THRESHOLD
    assert loss_style["hover"] == "%{y:.4g}"
    assert html.json_block(page, "figure-acc")["layout"]["meta"]["hover"] == "%{y:.2f} %"  # accuracy in %
    assert html.json_block(page, "run-data")["metric_order"] == list(METRIC_ORDER)
    script = (Path(__file__).resolve().parents[2] / "static" / "run_detail.js").read_text()
    assert "#4c78a8" not in script and "SCATTERGL_THRESHOLD" not in script and "MARKERS_UP_TO" not in script


def test_run_page_long_series_use_webgl(client: TestClient, seed: Any, html: SimpleNamespace) -> None:
    page = client.get(f"/runs/{seed.run(RunStatus.running, points=3500)}").text
    traces = {trace["name"]: trace for trace in html.json_block(page, "figure-loss")["data"]}
    assert traces["train/loss"]["type"] == "scattergl"
    assert len(traces["train/loss"]["x"]) <= 2000  # downsampled on the server
    assert traces["val/loss"]["type"] == "scatter"  # 350 points


def test_run_page_layer_table_totals_the_parameters(client: TestClient, seed: Any) -> None:
    page = client.get(f"/runs/{seed.run()}").text
    for text in ("3*32*5*5 + 32", "2,432", "64*10 + 10", "<strong>390,410</strong>"):
        assert text in page


def test_run_page_hyperparameters_and_history(client: TestClient, seed: Any) -> None:
    page = client.get(f"/runs/{seed.run(RunStatus.succeeded, hyperparameters={'lr': 0.0321})}").text
    assert '<td class="mono">0.0321</td>' in page
    for kind in ("queued", "started", "succeeded"):
        assert f'class="event-kind event-{kind}"' in page
    assert "started on host test-host" in page


def test_run_page_checkpoint_link_only_when_the_file_exists(client: TestClient, seed: Any, engine: Any,
                                                             settings: Settings) -> None:
    run_id = seed.run(RunStatus.succeeded)
    assert "/checkpoint" not in client.get(f"/runs/{run_id}").text
    path = Path(settings.ARTIFACTS_DIR) / str(run_id) / "checkpoint.pt"
    with Session(engine) as session:
        run = session.get(Run, run_id)
        run.checkpoint_path = str(path)
        session.add(run)
        session.commit()
    assert "/checkpoint" not in client.get(f"/runs/{run_id}").text  # recorded, but no file
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    assert f'href="/api/runs/{run_id}/checkpoint" download' in client.get(f"/runs/{run_id}").text


# ------------------------------------------------------------------ 404s ---

@pytest.mark.parametrize("path", ["/runs/999999", "/runs/abc", "/no/such/page", "/runs/new?clone=999999",
                                  "/runs/new?clone=x", "/compare?ids=999999"])
def test_not_found_is_an_html_page(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>Not found</h1>" in response.text and 'href="/"' in response.text


def test_not_found_names_the_missing_run(client: TestClient) -> None:
    assert "run 999999 not found" in client.get("/runs/999999").text


@pytest.mark.parametrize("path", ["/api/runs/999999", "/api/nope", "/static/nope.css"])
def test_not_found_stays_json_for_the_api(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "detail" in response.json()
