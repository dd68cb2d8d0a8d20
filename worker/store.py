"""The worker's side of the database: app.services.lifecycle, one short-lived session per call.

A worker never keeps a session (nor a transaction) open across training steps:
each call here opens a session, runs one lifecycle function (one transaction)
and closes it. That is what lets the training thread and the heartbeat thread
write at the same time, and a brief database outage cost only the calls made
during it.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from celery import signals
from sqlalchemy import Engine
from sqlmodel import Session

from app.core.db import get_engine
from app.models import Run
from app.services import lifecycle
from worker.metric_writer import PendingPoint, Progress

log = logging.getLogger(__name__)

T = TypeVar("T")


class RunStore:
    """Lifecycle calls for one run; `engine` defaults to the process-wide one from Settings."""

    def __init__(self, run_id: int, engine: Engine | None = None) -> None:
        self.run_id = run_id
        self._engine = engine
        self._best_written: dict[str, Any] | None = None

    @property
    def engine(self) -> Engine:
        return self._engine or get_engine()

    def call(self, function: Callable[..., T], **kwargs: Any) -> T:
        """`function(session=…, run_id=…, **kwargs)` in a fresh session."""
        with Session(self.engine) as session:
            return function(session=session, run_id=self.run_id, **kwargs)

    # ------------------------------------------------------------- lifecycle ---

    def claim(self, hostname: str, attempts: int = 5, queued_at: datetime | None = None) -> Run | None:
        """claim_run, retried: a database blink must not leave a delivered run queued forever."""
        def claim() -> Run | None:
            with Session(self.engine, expire_on_commit=False) as session:
                return lifecycle.claim_run(session=session, run_id=self.run_id, hostname=hostname,
                                           pid=os.getpid(), queued_at=queued_at)

        return retry(claim, attempts=attempts, what=f"claiming run {self.run_id}")

    def load(self) -> Run:
        """The run as claimed (detached, fully loaded); for the training process the claim started."""
        with Session(self.engine, expire_on_commit=False) as session:
            run = session.get(Run, self.run_id)
            if run is None:
                raise LookupError(f"run {self.run_id} is gone")
            session.expunge(run)
            return run

    def status(self) -> str | None:
        return retry(lambda: self.call(lifecycle.run_status), attempts=3, what=f"reading run {self.run_id}")

    def request_stop(self, message: str) -> bool:
        return retry(lambda: self.call(lifecycle.request_stop, message=message), attempts=3,
                     what=f"asking run {self.run_id} to stop")

    def write_points(self, points: Sequence[PendingPoint]) -> None:
        """The MetricWriter's sink: one transaction per batch."""
        self.call(lifecycle.add_metric_points, points=[point._asdict() for point in points])

    def beat(self, progress: Progress | None, best_metrics: dict[str, Any] | None = None) -> bool:
        """Heartbeat plus progress (and the best metrics so far when they changed); False when the
        run is no longer running."""
        if progress is None:  # still loading data: nothing to report but being alive
            return self.call(lifecycle.heartbeat_run)
        changed_best = best_metrics if best_metrics and best_metrics != self._best_written else None
        still_running = self.call(lifecycle.update_progress, epoch=progress.epoch, step=progress.step,
                                  total_steps=progress.total_steps, images_per_s=progress.images_per_s,
                                  best_metrics=changed_best)
        if changed_best is not None:
            self._best_written = changed_best
        return still_running

    def cancel_requested(self) -> bool:
        return self.call(lifecycle.is_cancel_requested)

    def record_checkpoint(self, path: str, step: int) -> None:
        self.call(lifecycle.record_checkpoint, checkpoint_path=path, step=step)

    def record_environment(self, precision: str, device_info: dict[str, Any]) -> None:
        self.call(lifecycle.record_environment, precision=precision, device_info=device_info)

    def add_event(self, kind: str, message: str) -> None:
        self.call(lifecycle.add_event, kind=kind, message=message)

    def truncate_metrics(self, after_step: int) -> int:
        return self.call(lifecycle.truncate_metrics, after_step=after_step)

    def finish(self, status: str, *, final_metrics: dict[str, Any] | None = None,
               best_metrics: dict[str, Any] | None = None, error: str | None = None,
               checkpoint_path: str | None = None, attempts: int = 5, message: str | None = None) -> Run | None:
        """finish_run, retried: a run must not stay `running` because the database blinked."""
        return retry(lambda: self.call(lifecycle.finish_run, status=status, final_metrics=final_metrics,
                                       best_metrics=best_metrics, error=error, checkpoint_path=checkpoint_path,
                                       message=message),
                     attempts=attempts, what=f"finishing run {self.run_id} as {status}")


def retry(action: Callable[[], T], *, attempts: int, what: str, delay_s: float = 0.5) -> T:
    """`action()`, retried with doubling delays; the last error propagates."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as err:
            if attempt == attempts:
                raise
            log.warning("%s failed (attempt %d of %d): %s: %s", what, attempt, attempts, type(err).__name__, err)
            time.sleep(delay_s)
            delay_s *= 2
    raise AssertionError("unreachable")


def write_worker_heartbeat(hostname: str, stopping: bool, device: str | None = None,
                           precision: str | None = None) -> None:
    """This worker process is alive (or, `stopping`, leaves cleanly): its row in worker_heartbeat."""
    with Session(get_engine()) as session:
        if stopping:
            lifecycle.remove_worker(session=session, hostname=hostname, pid=os.getpid())
        else:
            lifecycle.worker_heartbeat(session=session, hostname=hostname, pid=os.getpid(), device=device,
                                       precision=precision)


def relative_to_artifacts(path: Path, artifacts_dir: Path) -> str:
    """The path as stored on the run: relative to ARTIFACTS_DIR, so the folder can move (or be mounted elsewhere)."""
    try:
        return str(Path(path).resolve().relative_to(artifacts_dir.resolve()))
    except ValueError:
        return str(path)


@signals.worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    """A prefork pool child must not reuse the parent's pooled connections (shared sockets)."""
    get_engine().dispose(close=False)
