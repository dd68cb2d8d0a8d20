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
    assert {trace["name"] for trace in system["data"]} == {"system/cpu_percent", "system/rss_mib"}
    cpu = next(trace for trace in system["data"] if trace["name"] == "system/cpu_percent")
    assert cpu["y"] == [180.0, 190.0]  # two samples at one step (an evaluation) are both drawn
    assert 'data-prefix="system/"' in page and 'data-repeats-steps="1"' in page
    loss = html.json_block(page, "figure-loss")
    assert not any(trace["name"].startswith("system/") for trace in loss["data"])


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
