"""GET /api/runs/{id}/metrics (downsampled series) and GET /api/runs/{id}/events (SSE)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.models import Run, RunStatus
from app.services import lifecycle


def _add(session: Session, run_id: int, name: str, values: Any, start_step: int = 0) -> None:
    lifecycle.add_metric_points(session=session, run_id=run_id, points=[
        {"step": start_step + i, "epoch": (start_step + i) / 100, "name": name, "value": float(v),
         "time": (start_step + i) * 0.5}
        for i, v in enumerate(values)])


def test_metrics_returns_all_series_sorted_by_step(client: TestClient, session: Session,
                                                   make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running).id
    _add(session, run_id, "train/loss", [3.0, 2.0, 1.0])
    _add(session, run_id, "val/acc", [0.5, 0.6])
    lifecycle.add_metric_points(session=session, run_id=run_id, points=[  # written out of order
        {"step": 0, "epoch": 0.0, "name": "train/lr", "value": 0.1, "time": 0.0},
        {"step": 2, "epoch": 0.02, "name": "train/lr", "value": 0.05, "time": 1.0}])
    lifecycle.add_metric_points(session=session, run_id=run_id, points=[
        {"step": 1, "epoch": 0.01, "name": "train/lr", "value": 0.075, "time": 0.5}])
    body = client.get(f"/api/runs/{run_id}/metrics").json()
    assert body["run_id"] == run_id
    series = {s["name"]: s for s in body["series"]}
    assert list(series) == ["train/loss", "train/lr", "val/acc"]
    assert series["train/loss"] == {"name": "train/loss", "step": [0, 1, 2], "epoch": [0.0, 0.01, 0.02],
                                    "time": [0.0, 0.5, 1.0], "value": [3.0, 2.0, 1.0], "downsampled": False,
                                    "total_points": 3}
    assert series["train/lr"]["step"] == [0, 1, 2] and series["train/lr"]["value"] == [0.1, 0.075, 0.05]


def test_metrics_filters_by_names_and_split(client: TestClient, session: Session,
                                            make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running).id
    for name in ("train/loss", "val/loss", "val/acc", "test/acc"):
        _add(session, run_id, name, [1.0, 2.0])

    def names(query: str) -> list[str]:
        return [s["name"] for s in client.get(f"/api/runs/{run_id}/metrics?{query}").json()["series"]]

    assert names("names=val/acc,train/loss") == ["val/acc", "train/loss"]
    assert names("names=val/acc&names=test/acc") == ["val/acc", "test/acc"]
    assert names("split=val") == ["val/acc", "val/loss"]
    assert names("split=val&names=train/loss") == []
    assert names("names=nope/x") == []


def test_metrics_downsampling_keeps_min_and_max(client: TestClient, session: Session,
                                                make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running).id
    values = np.sin(np.arange(20_000) / 300.0)
    values[12_345] = 50.0  # a loss spike
    values[777] = -50.0
    _add(session, run_id, "train/loss", values)
    series = client.get(f"/api/runs/{run_id}/metrics?max_points=500").json()["series"][0]
    assert series["downsampled"] and series["total_points"] == 20_000
    assert 100 < len(series["value"]) <= 500
    assert max(series["value"]) == 50.0 and min(series["value"]) == -50.0
    assert 12_345 in series["step"] and series["step"] == sorted(series["step"])
    assert series["step"][0] == 0 and series["step"][-1] == 19_999
    default = client.get(f"/api/runs/{run_id}/metrics").json()["series"][0]
    assert len(default["value"]) <= 2000


def test_metrics_nan_values_are_null(client: TestClient, session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running).id
    _add(session, run_id, "train/loss", [1.0, float("nan"), float("inf")])
    assert client.get(f"/api/runs/{run_id}/metrics").json()["series"][0]["value"] == [1.0, None, None]


def test_metrics_sees_new_points_and_truncation(client: TestClient, session: Session,
                                                make_run: Callable[..., Run]) -> None:
    """The per-process series cache must follow appends and a resume's truncation."""
    run_id = make_run(status=RunStatus.running).id
    url = f"/api/runs/{run_id}/metrics?names=train/loss"
    _add(session, run_id, "train/loss", [5.0, 4.0, 3.0])
    assert client.get(url).json()["series"][0]["value"] == [5.0, 4.0, 3.0]
    _add(session, run_id, "train/loss", [2.0], start_step=3)
    assert client.get(url).json()["series"][0]["step"] == [0, 1, 2, 3]
    lifecycle.truncate_metrics(session=session, run_id=run_id, after_step=1)
    _add(session, run_id, "train/loss", [9.0], start_step=2)
    assert client.get(url).json()["series"][0]["value"] == [5.0, 4.0, 9.0]


@pytest.mark.parametrize("query, loc", [("max_points=5", ("query", "max_points")),
                                        ("max_points=1000000", ("query", "max_points"))])
def test_metrics_bad_query_422(client: TestClient, make_run: Callable[..., Run], query: str, loc: tuple) -> None:
    response = client.get(f"/api/runs/{make_run().id}/metrics?{query}")
    assert response.status_code == 422 and tuple(response.json()["detail"][0]["loc"]) == loc


def test_metrics_unknown_run_404(client: TestClient) -> None:
    assert client.get("/api/runs/42/metrics").status_code == 404


# ----------------------------------------------------------------------- SSE ---

def read_sse(response: Any, on_message: Callable[[str], None] | None = None) -> list[tuple[str | None, str, Any]]:
    """(id, event, data) of each message of an SSE response, until the server closes it.

    `on_message(event)` is called as each message arrives."""
    messages, current = [], {}
    for line in response.iter_lines():
        if line == "":
            if "data" in current:
                messages.append((current.get("id"), current.get("event", "message"), json.loads(current["data"])))
                if on_message is not None:
                    on_message(messages[-1][1])
            current = {}
        elif not line.startswith(":") and ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.lstrip()
    return messages


def test_events_stream_finished_run_then_closes(client: TestClient, session: Session,
                                                make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running).id
    _add(session, run_id, "val/acc", [0.1, 0.2])
    lifecycle.finish_run(session=session, run_id=run_id, status="succeeded", final_metrics={"test/acc": 0.3},
                         best_metrics={"val/acc": 0.2})
    with client.stream("GET", f"/api/runs/{run_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = read_sse(response)
    kinds = [event for _, event, _ in messages]
    assert kinds[0] == "status" and kinds[-1] == "end"
    assert {"status", "progress", "metrics", "event", "end"} == set(kinds)
    status = next(data for _, event, data in messages if event == "status")
    assert status["status"] == "succeeded" and status["final_metrics"] == {"test/acc": 0.3}
    event_id, _, metrics = next(m for m in messages if m[1] == "metrics")
    assert metrics["series"] == [{"name": "val/acc", "step": [0, 1], "epoch": [0.0, 0.01], "time": [0.0, 0.5],
                                  "value": [0.1, 0.2]}]
    assert event_id == str(metrics["last_id"])
    assert [data["kind"] for _, event, data in messages if event == "event"] == ["succeeded"]


def test_events_stream_follows_a_running_run(client: TestClient, engine: Any, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.queued).id
    # The worker claims the run only once the stream has sent its first status, so "queued" is seen
    # first however busy the machine (a fixed sleep raced the stream's first poll under load).
    stream_open = threading.Event()

    def worker() -> None:
        with Session(engine) as session:
            assert stream_open.wait(30), "the stream sent no status"
            lifecycle.claim_run(session=session, run_id=run_id, hostname="gpu-7")
            for step in range(3):
                time.sleep(0.15)
                _add(session, run_id, "train/loss", [1.0 / (step + 1)], start_step=step)
                lifecycle.update_progress(session=session, run_id=run_id, epoch=step / 3, step=step, total_steps=3)
            time.sleep(0.15)
            lifecycle.finish_run(session=session, run_id=run_id, status="succeeded", final_metrics={},
                                 best_metrics={})

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        with client.stream("GET", f"/api/runs/{run_id}/events") as response:
            messages = read_sse(response, on_message=lambda event: event == "status" and stream_open.set())
    finally:
        stream_open.set()  # never leave the worker waiting
        thread.join()
    statuses = [data["status"] for _, event, data in messages if event == "status"]
    # In order, each once; "running" may fall between two polls on a busy box (the "started" event below proves it).
    assert statuses[0] == "queued" and statuses[-1] == "succeeded"
    assert list(dict.fromkeys(statuses)) in (["queued", "running", "succeeded"], ["queued", "succeeded"])
    steps = [step for _, event, data in messages if event == "metrics" for s in data["series"] for step in s["step"]]
    assert steps == [0, 1, 2]  # every point exactly once
    assert [data["kind"] for _, event, data in messages if event == "event"] == ["started", "succeeded"]
    assert any(event == "progress" and data["step"] == 2 for _, event, data in messages)


@pytest.mark.parametrize("resume", ["header", "query"])
def test_events_stream_resumes_after_last_event_id(client: TestClient, session: Session,
                                                   make_run: Callable[..., Run], resume: str) -> None:
    run_id = make_run(status=RunStatus.running).id
    _add(session, run_id, "train/loss", [1.0, 2.0, 3.0])
    lifecycle.finish_run(session=session, run_id=run_id, status="cancelled", final_metrics={}, best_metrics={})
    with client.stream("GET", f"/api/runs/{run_id}/events") as response:
        first_ids = [int(i) for i, event, _ in read_sse(response) if event == "metrics"]
    # Pretend the first two points were received: resume after the second one's id.
    after = first_ids[-1] - 1
    kwargs = {"headers": {"Last-Event-ID": str(after)}} if resume == "header" else {"params": {"after": after}}
    with client.stream("GET", f"/api/runs/{run_id}/events", **kwargs) as response:
        steps = [step for _, event, data in read_sse(response) if event == "metrics"
                 for s in data["series"] for step in s["step"]]
    assert steps == [2]


def test_events_unknown_run_404(client: TestClient) -> None:
    assert client.get("/api/runs/999/events").status_code == 404
