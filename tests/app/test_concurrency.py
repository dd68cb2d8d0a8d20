"""Four writers adding metric points while readers poll /metrics: exact counts, no 'database is locked'."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session

from app.models import MetricPoint, Run, RunStatus
from app.services import lifecycle

WRITERS, BATCHES, BATCH_SIZE = 4, 25, 40


def test_concurrent_metric_writers_and_readers(client: TestClient, engine: Any, make_run: Callable[..., Run]) -> None:
    run_ids = [make_run(status=RunStatus.running).id for _ in range(WRITERS)]
    errors: list[BaseException] = []
    writers_done = threading.Event()
    reads = []

    def write(run_id: int) -> None:
        try:
            with Session(engine) as session:
                for batch in range(BATCHES):
                    start = batch * BATCH_SIZE
                    lifecycle.add_metric_points(session=session, run_id=run_id, points=[
                        {"step": start + i, "epoch": (start + i) / 100, "name": name, "value": 1.0,
                         "time": 0.0} for i in range(BATCH_SIZE // 2) for name in ("train/loss", "train/lr")])
                    lifecycle.update_progress(session=session, run_id=run_id, epoch=batch, step=start)
                    lifecycle.is_cancel_requested(session=session, run_id=run_id)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    def read() -> None:
        try:
            while not writers_done.is_set():
                for run_id in run_ids:
                    response = client.get(f"/api/runs/{run_id}/metrics?max_points=100")
                    assert response.status_code == 200, response.text
                    reads.append(sum(s["total_points"] for s in response.json()["series"]))
                assert client.get("/api/runs?status=running").status_code == 200
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    writers = [threading.Thread(target=write, args=(run_id,)) for run_id in run_ids]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=120)
    writers_done.set()
    for thread in readers:
        thread.join(timeout=60)

    assert not errors, errors
    assert reads, "the readers never got an answer"
    expected = BATCHES * BATCH_SIZE
    with Session(engine) as session:
        counts = dict(session.execute(select(MetricPoint.run_id, func.count()).group_by(MetricPoint.run_id)).all())
    assert counts == {run_id: expected for run_id in run_ids}
    for run_id in run_ids:  # and the chart cache agrees with the table
        series = client.get(f"/api/runs/{run_id}/metrics").json()["series"]
        assert sum(s["total_points"] for s in series) == expected
