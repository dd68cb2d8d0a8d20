"""What a training worker calls, from claiming a run to finishing it; plus the watchdog.

Every function takes an open `Session` first (keyword-only), runs ONE short
transaction and commits it before returning, so a worker never holds a database
transaction (or SQLite's write lock) across training steps. Functions that write
start their transaction with `begin_write` (BEGIN IMMEDIATE on SQLite).

A worker's life with these, in order:

    run = claim_run(session=s, run_id=rid, hostname=host)      # None → drop the task
    # after loading a checkpoint on a redelivered run:
    truncate_metrics(session=s, run_id=rid, after_step=ckpt_step)
    add_event(session=s, run_id=rid, kind="resumed", message=f"resumed from checkpoint at step {n}")
    loop:
        add_metric_points(session=s, run_id=rid, points=[...])  # batched, every HEARTBEAT_INTERVAL_S
        update_progress(session=s, run_id=rid, epoch=.., step=.., total_steps=.., images_per_s=..)
        heartbeat_run(session=s, run_id=rid)                     # when no progress for a while (≤ 10 s)
        is_cancel_requested(session=s, run_id=rid)               # True → stop between steps
        record_checkpoint(session=s, run_id=rid, checkpoint_path=.., step=..)
    finish_run(session=s, run_id=rid, status="succeeded"|"failed"|"cancelled", final_metrics=.., best_metrics=..)
    worker_heartbeat(session=s, hostname=host, pid=pid)        # from the worker process, every ≤ 10 s
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from app.core.config import get_settings
from app.core.db import begin_write, is_sqlite, utcnow
from app.models import (
    TERMINAL_STATUSES,
    MetricPoint,
    Run,
    RunEvent,
    RunEventKind,
    RunStatus,
    WorkerHeartbeat,
)

POINT_KEYS = ("step", "epoch", "name", "value", "time")


def finite_or_none(value: Any) -> float | None:
    """The value as a float, or None for None, NaN and ±inf (JSON has no such numbers)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def clean_metrics(metrics: dict[str, Any] | None) -> dict[str, float | None]:
    return {str(name): finite_or_none(value) for name, value in (metrics or {}).items()}


def _locked_run(session: Session, run_id: int) -> Run | None:
    """The run, freshly read and row-locked until commit (FOR UPDATE on PostgreSQL)."""
    return session.get(Run, run_id, with_for_update=True, populate_existing=True)


def _event(session: Session, run_id: int, kind: str, message: str, time: datetime | None = None) -> RunEvent:
    event = RunEvent(run_id=run_id, time=time or utcnow(), kind=str(kind), message=message)
    session.add(event)
    return event


def _loaded_and_detached(session: Session, obj: Any) -> Any:
    """`obj` fully loaded and detached, with the session's read transaction ended.

    The worker keeps its session for hours; an open read transaction would pin an old
    snapshot (and on SQLite keep the WAL from being checkpointed) until its next call.
    """
    session.refresh(obj)
    session.expunge(obj)
    session.rollback()
    return obj


def _seconds(start: datetime | None, end: datetime) -> float | None:
    return (end - start).total_seconds() if start else None


def _end_run(session: Session, run: Run, status: RunStatus, kind: str, message: str,
             error: str | None = None) -> None:
    """Move `run` to a terminal status, with its times and one history event (caller commits)."""
    now = utcnow()
    run.status = status
    run.finished_at = now
    run.duration_s = _seconds(run.started_at, now)
    run.cancel_requested = run.cancel_requested and status == RunStatus.cancelled
    if error is not None:
        run.error = error
    _event(session, run.id, kind, message, now)


# --------------------------------------------------------------- claiming ---

def claim_run(*, session: Session, run_id: int, hostname: str, max_redeliveries: int | None = None,
              pid: int | None = None, queued_at: datetime | None = None,
              live_after: datetime | None = None) -> Run | None:
    """Take run `run_id` for this worker: queued → running. Returns the run (detached, fully
    loaded: read run.hyperparameters, run.dataset, run.checkpoint_path freely), or None to drop the task.

    - queued: becomes running with started_at and heartbeat_at = now, worker_host
      = hostname, and a "started" event.
    - running (the broker redelivered the task, e.g. after the worker died): it is
      re-claimed, resumed_count += 1, with a "resumed" event; the worker should then
      resume from `run.checkpoint_path` if it exists. A run redelivered more than
      `max_redeliveries` times (default: settings.MAX_REDELIVERIES) is failed
      instead, and one whose cancel was requested is cancelled; both return None.
    - missing, cancelled, succeeded or failed: None (nothing is written).
    - `queued_at` (the run's created_at, sent with the task) differs from the run's: the task
      was queued for another run that had this id; None (nothing is written).
    - running on another host whose heartbeat is newer than `live_after` (default: now minus
      HEARTBEAT_TIMEOUT_S): another worker is training it (a duplicate delivery); None.
    """
    settings = get_settings()
    if max_redeliveries is None:
        max_redeliveries = settings.MAX_REDELIVERIES
    if live_after is None:
        live_after = utcnow() - timedelta(seconds=settings.HEARTBEAT_TIMEOUT_S)
    begin_write(session)
    run = _locked_run(session, run_id)
    if run is None or run.status in TERMINAL_STATUSES or not same_run(run, queued_at):
        session.commit()
        return None
    last_sign_of_life = run.heartbeat_at or run.started_at
    if (run.status == RunStatus.running and run.worker_host != hostname and last_sign_of_life is not None
            and last_sign_of_life > live_after):
        session.commit()  # a live worker trains it: a second one must not
        return None

    now = utcnow()
    if run.status == RunStatus.queued:
        run.status, run.started_at = RunStatus.running, now
        _event(session, run.id, RunEventKind.started, f"started on host {hostname}", now)
    elif run.cancel_requested:
        _end_run(session, run, RunStatus.cancelled, RunEventKind.cancelled,
                 "cancelled: the task was redelivered after its cancel was requested")
        session.commit()
        return None
    elif run.resumed_count >= max_redeliveries:
        error = f"gave up after {run.resumed_count} redeliveries (the worker was lost each time)"
        _end_run(session, run, RunStatus.failed, RunEventKind.failed, f"failed: {error}", error=error)
        session.commit()
        return None
    else:
        run.resumed_count += 1
        _event(session, run.id, RunEventKind.resumed,
               f"redelivered to host {hostname} (was on {run.worker_host or 'an unknown host'}); "
               f"resume #{run.resumed_count}", now)
    run.worker_host = hostname
    run.worker_pid = pid  # with worker_host: which process of the fleet (/workers) trains it
    run.heartbeat_at = now
    session.commit()
    return _loaded_and_detached(session, run)


def same_run(run: Run, queued_at: datetime | None) -> bool:
    """True when `run` is the run a task sent with `queued_at` (its created_at) was queued for.

    Tasks sent before tokens existed carry none and are trusted.
    """
    if queued_at is None:
        return True
    return abs((run.created_at - queued_at).total_seconds()) < 0.001


# ---------------------------------------------------------------- metrics ---

def add_metric_points(*, session: Session, run_id: int, points: Iterable[dict[str, Any]]) -> int:
    """Insert a batch of metric points of run `run_id` in one transaction; returns how many.

    Each point: {"step": int, "epoch": float, "name": "val/acc", "value": float,
    "time": seconds since the run started, "split": optional, defaults to the
    part of name before "/"}. NaN and infinite values are stored as NULL.
    Points of one run must come from one writer at a time, so that their ids
    follow commit order (the live stream reads "points after id N").
    """
    rows = []
    for point in points:
        missing = [key for key in POINT_KEYS if key not in point]
        if missing:
            raise ValueError(f"metric point {point!r} lacks {', '.join(missing)}")
        name = str(point["name"])
        rows.append({
            "run_id": run_id,
            "step": int(point["step"]),
            "epoch": float(point["epoch"]),
            "split": str(point.get("split") or name.split("/", 1)[0]),
            "name": name,
            "value": finite_or_none(point["value"]),
            "time": float(point["time"]),
        })
    if not rows:
        return 0
    begin_write(session)
    # Core executemany: one statement for the batch, no ORM object per point.
    session.execute(insert(MetricPoint.__table__), rows)
    session.commit()
    return len(rows)


def truncate_metrics(*, session: Session, run_id: int, after_step: int) -> int:
    """Delete the run's points with step > after_step (before resuming from a checkpoint at that step)."""
    begin_write(session)
    result = session.execute(
        delete(MetricPoint.__table__).where(MetricPoint.run_id == run_id, MetricPoint.step > after_step)
    )
    deleted = result.rowcount or 0
    if deleted:
        # Also tells the chart cache (app.services.metrics) to reload the run's series.
        _event(session, run_id, RunEventKind.metrics_truncated,
               f"dropped {deleted} metric points after step {after_step}")
    session.commit()
    return deleted


# --------------------------------------------------------------- progress ---

def update_progress(*, session: Session, run_id: int, epoch: float, step: int,
                    total_steps: int | None = None, images_per_s: float | None = None,
                    heartbeat: bool = True, best_metrics: dict[str, Any] | None = None) -> bool:
    """Record the run's progress (and, by default, a heartbeat). Returns False when the run is
    no longer running (finished, failed by the watchdog, missing): the worker should stop.

    best_metrics, when given, replaces the run's best-so-far metrics (keys like "val/acc").
    """
    values: dict[str, Any] = {"epoch": float(epoch), "step": int(step)}
    if total_steps is not None:
        values["total_steps"] = int(total_steps)
    if images_per_s is not None:
        values["images_per_s"] = finite_or_none(images_per_s)
    if heartbeat:
        values["heartbeat_at"] = utcnow()
    if best_metrics is not None:
        values["best_metrics"] = clean_metrics(best_metrics)
        values["best_val_acc"] = values["best_metrics"].get("val/acc")
    return _update_running(session, run_id, values)


def heartbeat_run(*, session: Session, run_id: int) -> bool:
    """Mark the run alive now (every ≤ 10 s). False when the run is no longer running."""
    return _update_running(session, run_id, {"heartbeat_at": utcnow()})


def _update_running(session: Session, run_id: int, values: dict[str, Any]) -> bool:
    begin_write(session)
    result = session.execute(
        update(Run).where(Run.id == run_id, Run.status == RunStatus.running).values(**values)
    )
    session.commit()
    return result.rowcount == 1


def is_cancel_requested(*, session: Session, run_id: int) -> bool:
    """True when the worker should stop training run `run_id`: its cancel was requested,
    or it is no longer running (the watchdog failed it, or it was deleted)."""
    row = session.execute(select(Run.cancel_requested, Run.status).where(Run.id == run_id)).first()
    session.commit()  # end the read transaction: never hold a snapshot between steps
    return row is None or bool(row.cancel_requested) or row.status != RunStatus.running


def record_checkpoint(*, session: Session, run_id: int, checkpoint_path: str, step: int | None = None) -> None:
    """Remember the run's latest checkpoint (a path inside ARTIFACTS_DIR, absolute or relative to it).

    Only a new path gets an event: the worker rewrites the same file at every evaluation,
    and one event per evaluation would bury the run's history.
    """
    begin_write(session)
    previous = session.execute(select(Run.checkpoint_path).where(Run.id == run_id)).scalar_one_or_none()
    session.execute(update(Run).where(Run.id == run_id).values(checkpoint_path=str(checkpoint_path)))
    if previous != str(checkpoint_path):
        where = f" at step {step}" if step is not None else ""
        _event(session, run_id, RunEventKind.checkpoint, f"first checkpoint saved{where}")
    session.commit()


def record_environment(*, session: Session, run_id: int, precision: str, device_info: dict[str, Any]) -> None:
    """What the run trains on: its precision and device (name, torch, CUDA and driver versions)."""
    begin_write(session)
    session.execute(update(Run).where(Run.id == run_id).values(precision=precision[:200], device_info=device_info))
    session.commit()


# -------------------------------------------------------------- finishing ---

def finish_run(*, session: Session, run_id: int, status: str, final_metrics: dict[str, Any] | None,
               best_metrics: dict[str, Any] | None, error: str | None = None,
               checkpoint_path: str | None = None, message: str | None = None) -> Run | None:
    """End the run: status is "succeeded", "failed" or "cancelled".

    Writes finished_at, duration, the metrics (keys like "val/acc", "test/acc";
    accuracy as a fraction; NaN becomes null), the error text for failures, the
    final checkpoint, and an event (`message`, or one made from the status). Returns None without writing anything when the
    run is missing or already finished (e.g. the watchdog failed it meanwhile).
    """
    status = RunStatus(status)
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"finish_run needs a terminal status, not {status!r}")
    begin_write(session)
    run = _locked_run(session, run_id)
    if run is None or run.status in TERMINAL_STATUSES:
        session.commit()
        return None
    run.final_metrics = clean_metrics(final_metrics)
    run.best_metrics = clean_metrics(best_metrics) or run.best_metrics
    run.best_val_acc = run.best_metrics.get("val/acc")
    run.test_acc = run.final_metrics.get("test/acc")
    if checkpoint_path is not None:
        run.checkpoint_path = str(checkpoint_path)
    _end_run(session, run, status, status.value, message or _finish_message(status, run.final_metrics, error),
             error=error)
    session.commit()
    return _loaded_and_detached(session, run)


def _finish_message(status: RunStatus, final_metrics: dict[str, float | None], error: str | None) -> str:
    if status == RunStatus.failed:
        text = (error or "").strip()
        first_line = text.splitlines()[0] if text else "unknown error"
        return f"failed: {first_line[:500]}"
    shown = ", ".join(f"{name} {value:.4g}" for name, value in final_metrics.items() if value is not None)
    return f"{status.value}" + (f": {shown}" if shown else "")


def request_stop(*, session: Session, run_id: int, message: str) -> bool:
    """Ask a running run's training to stop (as a cancel does), with `message` in its history.

    For stops the system decides (MAX_RUN_SECONDS). False when the run is no longer running.
    """
    begin_write(session)
    run = _locked_run(session, run_id)
    if run is None or run.status != RunStatus.running:
        session.commit()
        return False
    run.cancel_requested = True
    _event(session, run_id, RunEventKind.cancel_requested, message)
    session.commit()
    return True


def run_status(*, session: Session, run_id: int) -> str | None:
    """The run's status now, or None when it is gone."""
    status = session.execute(select(Run.status).where(Run.id == run_id)).scalar_one_or_none()
    session.commit()
    return None if status is None else str(RunStatus(status).value)


def add_event(*, session: Session, run_id: int, kind: str, message: str) -> RunEvent:
    """Append one entry to the run's history (kind: e.g. "info", "resumed", "checkpoint")."""
    begin_write(session)
    event = _event(session, run_id, kind, message)
    session.commit()
    return _loaded_and_detached(session, event)


# ---------------------------------------------------------------- workers ---

def worker_heartbeat(*, session: Session, hostname: str, pid: int, device: str | None = None,
                     precision: str | None = None) -> None:
    """Record that worker process (hostname, pid) is alive now (an upsert), and what it trains on."""
    dialect_insert = sqlite.insert if is_sqlite(session) else postgresql.insert
    now = utcnow()
    statement = dialect_insert(WorkerHeartbeat.__table__).values(
        hostname=hostname, pid=pid, last_seen=now, started_at=now, device=device, precision=precision)
    statement = statement.on_conflict_do_update(
        index_elements=["hostname", "pid"],
        set_={"last_seen": statement.excluded.last_seen, "device": statement.excluded.device,
              "precision": statement.excluded.precision},
    )
    begin_write(session)
    session.execute(statement)
    session.commit()


def _on_node(column: Any, node: str) -> Any:
    """`column` holds Celery node name `node@<any host>` (%h expands to the host name)."""
    escaped = node.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(f"{escaped}@%", escape="\\")


def worker_last_seen(*, session: Session, node: str, pid: int) -> datetime | None:
    """When worker process `pid` named `node@…` last beat; None when it never did (or left cleanly)."""
    last = session.execute(select(func.max(WorkerHeartbeat.last_seen)).where(
        _on_node(WorkerHeartbeat.hostname, node), WorkerHeartbeat.pid == pid)).scalar_one_or_none()
    session.commit()
    return last


def fail_runs_of_worker(*, session: Session, node: str, message: str) -> list[int]:
    """Fail the runs still `running` on the worker named `node@…` (it was killed); returns their ids."""
    begin_write(session)
    runs = session.scalars(select(Run).where(Run.status == RunStatus.running, _on_node(Run.worker_host, node))
                           .with_for_update()).all()
    for run in runs:
        _end_run(session, run, RunStatus.failed, RunEventKind.worker_lost, message, error=message)
    ids = [run.id for run in runs]
    session.commit()
    return ids


def remove_worker(*, session: Session, hostname: str, pid: int) -> None:
    """Forget a worker process that shuts down cleanly."""
    begin_write(session)
    session.execute(delete(WorkerHeartbeat.__table__).where(
        WorkerHeartbeat.hostname == hostname, WorkerHeartbeat.pid == pid))
    session.commit()


def count_live_workers(*, session: Session, timeout_s: float) -> int:
    """Worker processes with a heartbeat within the last timeout_s seconds."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    count = session.execute(
        select(func.count()).select_from(WorkerHeartbeat).where(WorkerHeartbeat.last_seen >= cutoff)
    ).scalar_one()
    session.commit()
    return count


def prune_worker_heartbeats(*, session: Session, older_than_s: float) -> int:
    """Delete heartbeats of workers gone for longer than older_than_s (crashed, never removed)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    begin_write(session)
    result = session.execute(delete(WorkerHeartbeat.__table__).where(WorkerHeartbeat.last_seen < cutoff))
    session.commit()
    return result.rowcount or 0


# --------------------------------------------------------------- watchdog ---

def mark_lost_runs(*, session: Session, timeout_s: float) -> list[int]:
    """Fail every running run whose last heartbeat (or start) is older than timeout_s.

    The error reads "worker lost: no heartbeat for N s" and the history gets a
    "worker_lost" event. Returns the ids of the runs it failed. Safe to run from
    several processes at once (rows are locked; locked ones are skipped).
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=timeout_s)
    last_sign_of_life = func.coalesce(Run.heartbeat_at, Run.started_at, Run.created_at)
    begin_write(session)
    lost = session.scalars(
        select(Run).where(Run.status == RunStatus.running, last_sign_of_life < cutoff)
        .with_for_update(skip_locked=True)
    ).all()
    for run in lost:
        last = run.heartbeat_at or run.started_at or run.created_at
        message = f"worker lost: no heartbeat for {round((now - last).total_seconds())} s"
        if run.worker_host:
            message += f" (host {run.worker_host})"
        _end_run(session, run, RunStatus.failed, RunEventKind.worker_lost, message, error=message)
    ids = [run.id for run in lost]
    session.commit()
    return ids
