"""The functions a worker calls: claim, metrics, progress, cancel, finish, heartbeats, the watchdog."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from app.core.db import utcnow
from app.models import MetricPoint, Run, RunEvent, RunStatus
from app.services import lifecycle


def _events(session: Session, run_id: int) -> list[tuple[str, str]]:
    session.rollback()  # end the snapshot: see what the service committed
    return [(e.kind, e.message) for e in session.scalars(
        select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)).all()]


def _points(count: int, name: str = "train/loss", start: int = 0) -> list[dict]:
    return [{"step": start + i, "epoch": (start + i) / 100, "name": name, "value": 1.0 / (start + i + 1),
             "time": 0.1 * (start + i)} for i in range(count)]


def test_claim_queued_run_marks_it_running(session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run().id
    run = lifecycle.claim_run(session=session, run_id=run_id, hostname="gpu-1")
    assert run is not None and run.status == RunStatus.running
    assert run.worker_host == "gpu-1" and run.started_at is not None and run.heartbeat_at is not None
    assert run.started_at.tzinfo is not None
    assert _events(session, run_id) == [("started", "started on host gpu-1")]


@pytest.mark.parametrize("status", [RunStatus.cancelled, RunStatus.succeeded, RunStatus.failed])
def test_claim_finished_run_returns_none(session: Session, make_run: Callable[..., Run], status: str) -> None:
    run_id = make_run(status=status).id
    assert lifecycle.claim_run(session=session, run_id=run_id, hostname="gpu-1") is None
    assert session.get(Run, run_id).status == status and _events(session, run_id) == []


def test_claim_missing_run_returns_none(session: Session) -> None:
    assert lifecycle.claim_run(session=session, run_id=12345, hostname="gpu-1") is None


# A redelivery that resumes a run comes after its worker is gone: its heartbeat is older than the
# timeout (a delivery while another worker still beats is a duplicate, dropped: tests/worker/test_claims.py).
def _silent_since() -> datetime:
    return utcnow() - timedelta(minutes=5)


def test_claim_redelivered_running_run_records_resume(session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running, worker_host="gpu-1", started_at=_silent_since()).id
    run = lifecycle.claim_run(session=session, run_id=run_id, hostname="gpu-2", max_redeliveries=3)
    assert run is not None and run.status == RunStatus.running
    assert run.resumed_count == 1 and run.worker_host == "gpu-2"
    [(kind, message)] = _events(session, run_id)
    assert kind == "resumed" and "gpu-2" in message and "gpu-1" in message


def test_claim_gives_up_after_max_redeliveries(session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running, started_at=_silent_since(), resumed_count=2).id
    assert lifecycle.claim_run(session=session, run_id=run_id, hostname="h", max_redeliveries=2) is None
    run = session.get(Run, run_id)
    assert run.status == RunStatus.failed and "redeliveries" in run.error and run.finished_at is not None


def test_claim_redelivered_run_with_cancel_request_is_cancelled(session: Session,
                                                                make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running, started_at=_silent_since(), cancel_requested=True).id
    assert lifecycle.claim_run(session=session, run_id=run_id, hostname="h", max_redeliveries=3) is None
    assert session.get(Run, run_id).status == RunStatus.cancelled


def test_add_metric_points_inserts_batch_exactly(session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running).id
    points = _points(500) + [{"step": 7, "epoch": 0.5, "name": "val/acc", "value": 0.42, "time": 3.0}]
    assert lifecycle.add_metric_points(session=session, run_id=run_id, points=points) == 501
    rows = session.execute(select(MetricPoint.split, func.count()).where(MetricPoint.run_id == run_id)
                           .group_by(MetricPoint.split).order_by(MetricPoint.split)).all()
    assert [tuple(row) for row in rows] == [("train", 500), ("val", 1)]


def test_add_metric_points_stores_nan_and_inf_as_null(session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running).id
    points = [{"step": i, "epoch": 0.0, "name": "train/loss", "value": v, "time": 0.0}
              for i, v in enumerate([math.nan, math.inf, 1.5])]
    lifecycle.add_metric_points(session=session, run_id=run_id, points=points)
    values = session.scalars(select(MetricPoint.value).order_by(MetricPoint.step)).all()
    assert values == [None, None, 1.5]


def test_add_metric_points_rejects_incomplete_point(session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run().id
    with pytest.raises(ValueError, match="lacks"):
        lifecycle.add_metric_points(session=session, run_id=run_id, points=[{"step": 1, "name": "x"}])
    assert lifecycle.add_metric_points(session=session, run_id=run_id, points=[]) == 0


def test_update_progress_writes_progress_and_heartbeat(session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running).id
    assert lifecycle.update_progress(session=session, run_id=run_id, epoch=1.5, step=300, total_steps=2000,
                                     images_per_s=812.5, best_metrics={"val/acc": 0.61})
    run = session.get(Run, run_id)
    assert (run.epoch, run.step, run.total_steps, run.images_per_s) == (1.5, 300, 2000, 812.5)
    assert run.heartbeat_at is not None and run.best_val_acc == 0.61


def test_update_progress_on_finished_run_returns_false(session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.failed).id
    assert not lifecycle.update_progress(session=session, run_id=run_id, epoch=1, step=1)
    assert not lifecycle.heartbeat_run(session=session, run_id=run_id)


def test_is_cancel_requested_follows_cancel_flag_and_status(session: Session, make_run: Callable[..., Run]) -> None:
    running = make_run(status=RunStatus.running).id
    assert not lifecycle.is_cancel_requested(session=session, run_id=running)
    session.get(Run, running).cancel_requested = True
    session.commit()
    assert lifecycle.is_cancel_requested(session=session, run_id=running)
    assert lifecycle.is_cancel_requested(session=session, run_id=make_run(status=RunStatus.failed).id)
    assert lifecycle.is_cancel_requested(session=session, run_id=99999)


def test_finish_run_records_metrics_times_and_event(session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running, started_at=utcnow() - timedelta(seconds=30)).id
    run = lifecycle.finish_run(session=session, run_id=run_id, status="succeeded",
                               final_metrics={"test/acc": 0.71, "test/loss": 0.9},
                               best_metrics={"val/acc": 0.73, "val/loss": math.nan},
                               checkpoint_path="1/last.pt")
    assert run.status == RunStatus.succeeded and run.finished_at is not None
    assert 29 < run.duration_s < 300  # 30 s before now, plus however long a busy box takes to get here
    assert run.test_acc == 0.71 and run.best_val_acc == 0.73 and run.best_metrics["val/loss"] is None
    assert run.checkpoint_path == "1/last.pt"
    [(kind, message)] = _events(session, run_id)
    assert kind == "succeeded" and "test/acc 0.71" in message


def test_finish_run_failed_keeps_error_text(session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running, started_at=utcnow()).id
    run = lifecycle.finish_run(session=session, run_id=run_id, status="failed", final_metrics={},
                               best_metrics={}, error="CUDA out of memory\nTraceback ...")
    assert run.status == RunStatus.failed and run.error.startswith("CUDA out of memory")
    assert _events(session, run_id) == [("failed", "failed: CUDA out of memory")]


def test_finish_run_on_finished_run_changes_nothing(session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.failed, error="worker lost").id
    assert lifecycle.finish_run(session=session, run_id=run_id, status="succeeded", final_metrics={},
                                best_metrics={}) is None
    assert session.get(Run, run_id).status == RunStatus.failed


def test_finish_run_rejects_non_terminal_status(session: Session, make_run: Callable[..., Run]) -> None:
    with pytest.raises(ValueError):
        lifecycle.finish_run(session=session, run_id=make_run().id, status="running", final_metrics={},
                             best_metrics={})


def test_add_event_and_record_checkpoint(session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running).id
    lifecycle.record_checkpoint(session=session, run_id=run_id, checkpoint_path=f"{run_id}/last.pt", step=100)
    lifecycle.record_checkpoint(session=session, run_id=run_id, checkpoint_path=f"{run_id}/last.pt", step=200)
    lifecycle.add_event(session=session, run_id=run_id, kind="resumed", message="resumed from checkpoint at step 100")
    assert session.get(Run, run_id).checkpoint_path == f"{run_id}/last.pt"
    # The same file rewritten at each evaluation makes one event, not one per evaluation.
    assert _events(session, run_id) == [("checkpoint", "first checkpoint saved at step 100"),
                                        ("resumed", "resumed from checkpoint at step 100")]


def test_truncate_metrics_drops_points_after_step(session: Session, make_run: Callable[..., Run]) -> None:
    run_id = make_run(status=RunStatus.running).id
    lifecycle.add_metric_points(session=session, run_id=run_id, points=_points(100))
    assert lifecycle.truncate_metrics(session=session, run_id=run_id, after_step=59) == 40
    assert session.scalar(select(func.max(MetricPoint.step))) == 59
    assert _events(session, run_id)[-1][0] == "metrics_truncated"


def test_worker_heartbeat_upserts_and_counts_live_workers(session: Session) -> None:
    lifecycle.worker_heartbeat(session=session, hostname="gpu-1", pid=10)
    lifecycle.worker_heartbeat(session=session, hostname="gpu-1", pid=10)
    lifecycle.worker_heartbeat(session=session, hostname="gpu-2", pid=11)
    assert lifecycle.count_live_workers(session=session, timeout_s=60) == 2
    lifecycle.remove_worker(session=session, hostname="gpu-2", pid=11)
    assert lifecycle.count_live_workers(session=session, timeout_s=60) == 1


def test_stale_worker_heartbeats_are_not_counted_and_get_pruned(session: Session) -> None:
    from app.models import WorkerHeartbeat

    session.add(WorkerHeartbeat(hostname="old", pid=1, last_seen=utcnow() - timedelta(hours=2)))
    session.commit()
    assert lifecycle.count_live_workers(session=session, timeout_s=60) == 0
    assert lifecycle.prune_worker_heartbeats(session=session, older_than_s=3600) == 1


def test_watchdog_marks_stale_running_runs_failed(session: Session, make_run: Callable[..., Run]) -> None:
    old = utcnow() - timedelta(seconds=300)
    stale = make_run(status=RunStatus.running, started_at=old, heartbeat_at=old, worker_host="gpu-9").id
    never_beat = make_run(status=RunStatus.running, started_at=old).id
    fresh = make_run(status=RunStatus.running, started_at=old, heartbeat_at=utcnow()).id
    queued = make_run(created_at=old).id

    assert sorted(lifecycle.mark_lost_runs(session=session, timeout_s=60)) == sorted([stale, never_beat])
    session.rollback()  # end the snapshot: see what the service committed
    failed = session.get(Run, stale)
    assert failed.status == RunStatus.failed and failed.finished_at is not None
    assert failed.error.startswith("worker lost: no heartbeat for 30") and "gpu-9" in failed.error
    assert _events(session, stale)[-1][0] == "worker_lost"
    assert session.get(Run, fresh).status == RunStatus.running
    assert session.get(Run, queued).status == RunStatus.queued
    assert lifecycle.mark_lost_runs(session=session, timeout_s=60) == []  # idempotent
