"""The run page's System chart and the precision/device line (issue 11)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session

from app.models import RunStatus
from app.services import lifecycle


def test_run_page_system_chart_shows_system_series_only(client: TestClient, seed: Any, engine: Any,
                                                        html: SimpleNamespace) -> None:
    run_id = seed.run(RunStatus.running, points=20)
    with Session(engine) as session:
        lifecycle.add_metric_points(session=session, run_id=run_id, points=[
            {"step": 19, "epoch": 1.9, "name": name, "value": value, "time": 5.0 + i}
            for i, (name, value) in enumerate([("system/cpu_percent", 180.0), ("system/rss_mib", 900.0),
                                               ("system/cpu_percent", 190.0)])])
    page = client.get(f"/runs/{run_id}").text
    system = html.json_block(page, "figure-system")
    assert {trace["meta"]["metric"] for trace in system["data"]} == {"system/cpu_percent", "system/rss_mib"}
    cpu = next(trace for trace in system["data"] if trace["meta"]["metric"] == "system/cpu_percent")
    assert cpu["y"] == [180.0, 190.0]  # two samples at one step (an evaluation) are both drawn
    assert cpu["x"] == [5.0, 7.0]  # by wall time: the step stands still during an evaluation
    assert system["layout"]["xaxis"]["title"]["text"] == "wall time (s)" and 'data-x="time"' in page
    assert 'data-prefix="system/"' in page and 'data-repeats-steps="1"' in page
    loss = html.json_block(page, "figure-loss")
    assert not any(trace["name"].startswith("system/") for trace in loss["data"])


def test_run_page_system_chart_gives_each_unit_its_own_row(client: TestClient, seed: Any, engine: Any,
                                                            html: SimpleNamespace) -> None:
    run_id = seed.run(RunStatus.running, points=5)
    with Session(engine) as session:
        lifecycle.add_metric_points(session=session, run_id=run_id, points=[
            {"step": 4, "epoch": 0.4, "name": name, "value": value, "time": 5.0}
            for name, value in [("system/cpu_percent", 180.0), ("system/gpu_util_percent", 97.0),
                                ("system/rss_mib", 900.0), ("system/gpu_memory_used_mib", 40_000.0),
                                ("system/images_per_s", 1500.0), ("system/disk_reads", 3.0)]])
    system = html.json_block(client.get(f"/runs/{run_id}").text, "figure-system")
    traces = {trace["meta"]["metric"]: trace for trace in system["data"]}
    rows = {metric: trace.get("yaxis", "y") for metric, trace in traces.items()}
    assert rows == {"system/cpu_percent": "y", "system/gpu_util_percent": "y", "system/rss_mib": "y2",
                    "system/gpu_memory_used_mib": "y2", "system/images_per_s": "y3", "system/disk_reads": "y3"}
    assert traces["system/cpu_percent"]["name"] == "CPU (%)"
    assert traces["system/disk_reads"]["name"] == "disk_reads"  # unknown series: its own name, the last row
    colours = [trace["line"]["color"] for metric, trace in traces.items() if metric != "system/disk_reads"]
    assert len(set(colours)) == len(colours)  # the shared legend tells every known series apart
    layout = system["layout"]
    assert [layout[key]["title"]["text"] for key in ("yaxis", "yaxis2", "yaxis3")] == ["%", "MiB", "images/s"]
    assert layout["yaxis"]["domain"][0] > layout["yaxis2"]["domain"][1] > layout["yaxis3"]["domain"][1]
    assert all(layout[key]["rangemode"] == "tozero" for key in ("yaxis", "yaxis2", "yaxis3"))
    assert layout["xaxis"]["anchor"] == "y3"  # epoch ticks under the bottom row
    assert [row["yaxis"] for row in layout["meta"]["system"]["rows"]] == ["y", "y2", "y3"]  # for live series


def test_run_page_system_chart_empty_hides_every_row(client: TestClient, seed: Any, html: SimpleNamespace) -> None:
    run_id = seed.run(RunStatus.running, points=3)
    layout = html.json_block(client.get(f"/runs/{run_id}").text, "figure-system")["layout"]
    assert all(layout[key]["visible"] is False for key in ("xaxis", "yaxis", "yaxis2", "yaxis3"))


def test_run_page_lr_chart_starts_at_zero(client: TestClient, seed: Any, html: SimpleNamespace) -> None:
    run_id = seed.run(RunStatus.running, points=3)
    layout = html.json_block(client.get(f"/runs/{run_id}").text, "figure-lr")["layout"]
    assert layout["yaxis"]["rangemode"] == "tozero"


def test_run_page_shows_precision_and_device(client: TestClient, seed: Any, engine: Any) -> None:
    run_id = seed.run(RunStatus.running)
    assert 'id="run-environment"' not in client.get(f"/runs/{run_id}").text  # nothing recorded yet
    with Session(engine) as session:
        lifecycle.record_environment(session=session, run_id=run_id,
                                     precision="bf16 + channels_last (the GPU supports bf16)",
                                     device_info={"name": "NVIDIA H200", "torch": "2.11.0", "cuda": "12.8",
                                                  "driver": "570.86"})
    page = client.get(f"/runs/{run_id}").text
    assert "bf16 + channels_last (the GPU supports bf16)" in page
    for text in ("NVIDIA H200", "torch 2.11.0", "CUDA 12.8", "driver 570.86"):
        assert text in page
    body = client.get(f"/api/runs/{run_id}").json()
    assert body["precision"].startswith("bf16") and body["device_info"]["name"] == "NVIDIA H200"
