"""Lost or doubled work: run ids are never reused, and a task claims only the run it was queued for."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, text
from sqlmodel import Session

from app.core.db import create_db_engine, migrate, utcnow
from app.models import Run, RunCreate, RunStatus
from app.services import lifecycle
from app.services.runs import create_runs, delete_run


def queue_run(session: Session) -> Run:
    return create_runs(session=session, runs_in=[RunCreate.model_validate({"model": "task1"})])[0]


def test_run_ids_never_reused_after_deleting_the_newest(session: Session) -> None:
    first, newest = queue_run(session).id, queue_run(session).id
    delete_run(session=session, run_id=newest)

    replacement = queue_run(session).id

    assert replacement > newest > first


def test_migration_0003_keeps_rows_and_stops_id_reuse(empty_database_url: str) -> None:
    engine: Engine = create_db_engine(empty_database_url)
    try:
        migrate(engine, "0002")
        with engine.begin() as connection:
            for _ in range(2):  # ids 1 and 2, from the database (PostgreSQL: its sequence)
                connection.execute(text(
                    "INSERT INTO run (name, model, dataset, hyperparameters, parameters, status, created_at, "
                    "tags, notes, cancel_requested, resumed_count, epoch, step, best_metrics, final_metrics) "
                    "VALUES ('r', 'task1', '{}', '{}', 1, 'succeeded', :now, '[]', '', false, 0, 1.0, 8, "
                    "'{}', '{}')"), {"now": utcnow()})
            connection.execute(text("INSERT INTO metric_point (run_id, step, epoch, split, name, value, time) "
                                    "VALUES (2, 1, 0.5, 'val', 'val/acc', 0.5, 1.0)"))
        migrate(engine)
        with engine.begin() as connection:
            assert connection.execute(text("SELECT count(*) FROM metric_point WHERE run_id = 2")).scalar_one() == 1
            connection.execute(text("DELETE FROM metric_point"))
            connection.execute(text("DELETE FROM run WHERE id = 2"))
        with Session(engine) as session:
            assert queue_run(session).id == 3
    finally:
        engine.dispose()


# ------------------------------------------------------------------ claims ---

def queued(session: Session) -> tuple[int, Any]:
    """A queued run's id and created_at (read before any claim detaches the object)."""
    run = queue_run(session)
    return run.id, run.created_at


def claim(session: Session, run_id: int, **kwargs: Any) -> Run | None:
    return lifecycle.claim_run(session=session, run_id=run_id, **{"hostname": "celery@a", **kwargs})


def reread(engine: Engine, run_id: int) -> Run:
    with Session(engine, expire_on_commit=False) as fresh:
        return fresh.get(Run, run_id)


def test_claim_run_other_created_at_drops_the_task(session: Session, engine: Engine) -> None:
    run_id, created_at = queued(session)

    assert claim(session, run_id, queued_at=created_at - timedelta(seconds=5)) is None
    assert reread(engine, run_id).status == RunStatus.queued
    assert claim(session, run_id, queued_at=created_at).status == RunStatus.running


def test_claim_run_trained_by_a_live_worker_elsewhere_is_dropped(session: Session, engine: Engine) -> None:
    run_id, _ = queued(session)
    assert claim(session, run_id, hostname="celery@a") is not None

    assert claim(session, run_id, hostname="celery@b") is None  # a duplicate delivery: a trains it
    again = reread(engine, run_id)
    assert again.resumed_count == 0 and again.worker_host == "celery@a"


def test_claim_run_with_silent_worker_elsewhere_resumes(session: Session) -> None:
    run_id, _ = queued(session)
    assert claim(session, run_id, hostname="celery@a") is not None

    resumed = claim(session, run_id, hostname="celery@b", live_after=utcnow() + timedelta(seconds=1))

    assert resumed is not None and resumed.resumed_count == 1 and resumed.worker_host == "celery@b"
