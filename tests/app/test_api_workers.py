"""The worker fleet: GET /api/workers, the /workers page, and the run page's link to its worker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import select
from sqlmodel import Session

from app.core.db import utcnow
from app.models import Run, WorkerHeartbeat
from app.services import lifecycle


def beat(session: Session, hostname: str, pid: int, **device: Any) -> None:
    lifecycle.worker_heartbeat(session=session, hostname=hostname, pid=pid, **device)


def age_worker(session: Session, hostname: str, seconds: float) -> None:
    session.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.hostname == hostname)
                    .values(last_seen=utcnow() - timedelta(seconds=seconds)))
    session.commit()


def test_workers_api_lists_device_current_and_finished_runs(client: TestClient, session: Session,
                                                            make_run: Callable[..., Run]) -> None:
    beat(session, "celery@gpu-a", 101, device="cuda:0 NVIDIA H200", precision="bf16 autocast")
    beat(session, "celery@gpu-b", 202, device="cpu, 2 threads", precision="fp32")
    finished = [make_run(name=f"done-{i}") for i in range(2)]
    for run in finished:
        lifecycle.claim_run(session=session, run_id=run.id, hostname="celery@gpu-a", pid=101)
        lifecycle.finish_run(session=session, run_id=run.id, status="succeeded", final_metrics={},
                             best_metrics={}, error=None, checkpoint_path=None)
    current = make_run(name="training")
    lifecycle.claim_run(session=session, run_id=current.id, hostname="celery@gpu-a", pid=101)
    # Same host name, another process: not this worker's run.
    other = make_run(name="other process")
    lifecycle.claim_run(session=session, run_id=other.id, hostname="celery@gpu-a", pid=999)

    body = client.get("/api/workers").json()

    assert body["count"] == 2 and body["live"] == 2
    by_host = {worker["hostname"]: worker for worker in body["data"]}
    gpu_a = by_host["celery@gpu-a"]
    assert (gpu_a["pid"], gpu_a["device"], gpu_a["precision"]) == (101, "cuda:0 NVIDIA H200", "bf16 autocast")
    assert gpu_a["current_run"] == {"id": current.id, "name": "training", "status": "running"}
    assert gpu_a["finished_count"] == 2
    assert {run["id"] for run in gpu_a["finished_runs"]} == {run.id for run in finished}
    assert gpu_a["lost"] is False and gpu_a["started_at"] is not None
    assert by_host["celery@gpu-b"]["current_run"] is None and by_host["celery@gpu-b"]["finished_count"] == 0
    assert client.get(f"/api/runs/{current.id}").json()["worker_pid"] == 101


def test_workers_api_marks_silent_worker_lost_and_lists_it_last(client_factory: Callable[..., Any],
                                                                session: Session) -> None:
    client = client_factory(HEARTBEAT_TIMEOUT_S=30)
    beat(session, "celery@a-silent", 1)
    beat(session, "celery@b-alive", 2)
    age_worker(session, "celery@a-silent", 45)

    body = client.get("/api/workers").json()

    assert [(w["hostname"], w["lost"]) for w in body["data"]] == [("celery@b-alive", False), ("celery@a-silent", True)]
    assert body["live"] == 1 and body["data"][1]["seconds_since_heartbeat"] >= 45
    page = client.get("/workers")
    assert page.status_code == 200
    assert 'data-worker="celery@a-silent" data-lost="true"' in page.text and ">lost</span>" in page.text


def test_workers_heartbeat_keeps_start_time_and_updates_device(session: Session) -> None:
    beat(session, "celery@x", 7)
    started_at = session.exec(select(WorkerHeartbeat)).one().started_at
    session.expire_all()
    beat(session, "celery@x", 7, device="cpu, 4 threads", precision="fp32")
    row = session.exec(select(WorkerHeartbeat)).one()
    assert row.started_at == started_at and row.last_seen >= started_at
    assert (row.device, row.precision) == ("cpu, 4 threads", "fp32")


def test_workers_page_empty_fleet_explains_how_to_start_one(client: TestClient) -> None:
    page = client.get("/workers")
    assert page.status_code == 200 and "No worker has reported yet" in page.text
    assert 'href="/workers" aria-current="page"' in page.text


def test_run_page_links_the_worker_that_ran_it(client: TestClient, session: Session,
                                               make_run: Callable[..., Run]) -> None:
    run = make_run(name="linked")
    lifecycle.claim_run(session=session, run_id=run.id, hostname="celery@gpu-a", pid=101)
    beat(session, "celery@gpu-a", 101)

    run_page = client.get(f"/runs/{run.id}").text
    workers_page = client.get("/workers").text

    assert 'href="/workers#worker-celery-gpu-a-101"' in run_page
    assert 'id="worker-celery-gpu-a-101"' in workers_page
    assert f'href="/runs/{run.id}"' in workers_page  # and back, from the worker's current run
