"""The worker fleet (GET /api/workers, /workers): every worker process with a recent heartbeat row.

A worker is one Celery process: (hostname, pid), hostname being its node name
(celery@host). Runs remember the process that claimed them (run.worker_host,
run.worker_pid), which gives each worker its current run and the runs it has
finished. A worker silent for longer than HEARTBEAT_TIMEOUT_S is listed as lost
until the watchdog forgets it (app.main prunes rows after a few timeouts).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session

from app.core.db import utcnow
from app.models import TERMINAL_STATUSES, Run, RunStatus, WorkerHeartbeat

RECENT_FINISHED_RUNS = 10
MAX_WORKERS_LISTED = 500


def _ref(run: Run) -> dict[str, Any]:
    return {"id": run.id, "name": run.name, "status": run.status}


def list_workers(*, session: Session, timeout_s: float) -> list[dict[str, Any]]:
    """Workers, live ones first then by host name; each with its current and recent finished runs."""
    now = utcnow()
    workers = session.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.hostname, WorkerHeartbeat.pid)
                              .limit(MAX_WORKERS_LISTED)).all()
    listed = []
    for worker in workers:
        of_worker = (Run.worker_host == worker.hostname, Run.worker_pid == worker.pid)
        current = session.scalars(select(Run).where(*of_worker, Run.status == RunStatus.running)
                                  .order_by(Run.started_at.desc()).limit(1)).first()
        finished = select(Run).where(*of_worker, Run.status.in_(list(TERMINAL_STATUSES)))
        finished_count = session.scalar(select(func.count()).select_from(finished.subquery())) or 0
        recent = session.scalars(finished.order_by(Run.finished_at.desc(), Run.id.desc())
                                 .limit(RECENT_FINISHED_RUNS)).all()
        age_s = max(0.0, (now - worker.last_seen).total_seconds())
        listed.append({
            "hostname": worker.hostname, "pid": worker.pid, "device": worker.device,
            "precision": worker.precision, "started_at": worker.started_at, "last_seen": worker.last_seen,
            "seconds_since_heartbeat": round(age_s, 1), "lost": age_s > timeout_s,
            "current_run": _ref(current) if current else None,
            "finished_count": finished_count, "finished_runs": [_ref(run) for run in recent],
        })
    session.commit()  # end the read transaction (SQLite: do not pin the WAL)
    listed.sort(key=lambda worker: worker["lost"])  # stable: live first, each group by host name
    return listed
