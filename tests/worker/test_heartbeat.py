"""RunHeartbeat and WorkerHeartbeat against a real SQLite database: periodic flush, cancel, outages, workers."""

from __future__ import annotations

import socket
import sqlite3
import time
from contextlib import contextmanager
from typing import Iterator

import pytest
from celery import signals
from sqlalchemy import Engine, event
from sqlmodel import Session

from app.core.db import get_engine
from app.services import lifecycle
from app.services.runs import request_cancel
from ml.trainer import EvalReport, StepReport, TrainStart
from worker import heartbeat as heartbeat_module
from worker.heartbeat import RunHeartbeat, WorkerHeartbeat
from worker.metric_writer import MetricWriter
from worker.store import RunStore, write_worker_heartbeat

POLL_S = 0.02  # the heartbeats tick every 0.1-0.2 s here: poll more often than that
EVAL_METRICS = {"train/loss": 2.0, "train/acc": 0.1, "val/loss": 2.1, "val/acc": 0.12,
                "test/loss": 2.2, "test/acc": 0.11}


@pytest.fixture
def running_run(db, tmp_path) -> int:
    # The launch checks need a dataset larger than one batch: the built-in sample.
    run_id = db.queue({"name": "cifar10-sample"})
    assert RunStore(run_id).claim("celery@test") is not None
    return run_id


@pytest.fixture
def writer(running_run: int) -> MetricWriter:
    writer = MetricWriter(RunStore(running_run).write_points, retry_delay_s=0.05)
    writer.on_train_start(TrainStart(total_steps=100, steps_per_epoch=10, start_step=0, parameters=1,
                                     trainable_parameters=1, device="cpu", num_train=1, num_val=1, num_test=1))
    return writer


def step(n: int) -> StepReport:
    return StepReport(step=n, epoch=n / 10, loss=1.5, lr=0.05, images_per_s=1000.0, total_steps=100)


@contextmanager
def metric_inserts_failing(engine: Engine) -> Iterator[None]:
    """The database refuses metric inserts (as when it is briefly unavailable) inside the block."""
    def refuse(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO METRIC_POINT"):
            raise sqlite3.OperationalError("disk I/O error (injected by the test)")

    event.listen(engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", refuse)


def test_run_heartbeat_flushes_points_and_progress_within_2s(db, running_run: int, writer: MetricWriter,
                                                             wait_until) -> None:
    with RunHeartbeat(RunStore(running_run), writer):  # the default interval: 2 s
        began_heartbeat = db.run(running_run).heartbeat_at
        writer.on_step(step(3))
        waited = wait_until(lambda: len(db.points(running_run)) == 3, 5, "the step's 3 points flushed",
                            poll_s=POLL_S)
    assert waited <= 3.0, f"first flush after {waited:.2f} s"  # one 2 s interval, plus a busy machine's slack
    run = db.run(running_run)
    assert (run.step, run.epoch, run.total_steps, run.images_per_s) == (3, 0.3, 100, 1000.0)
    assert run.heartbeat_at > began_heartbeat


def test_run_heartbeat_sees_cancel_and_sets_should_stop(db, running_run: int, writer: MetricWriter,
                                                        wait_until) -> None:
    with RunHeartbeat(RunStore(running_run), writer, interval_s=0.2) as heartbeat:
        assert not heartbeat.should_stop()
        with Session(get_engine()) as session:
            request_cancel(session=session, run_id=running_run)
        wait_until(heartbeat.should_stop, 1, "should_stop after the cancel", poll_s=POLL_S)
    assert heartbeat.cancel_requested and not heartbeat.worker_stopping


def test_run_heartbeat_retry_after_db_unavailable_loses_nothing(db, running_run: int, writer: MetricWriter,
                                                                wait_until) -> None:
    with RunHeartbeat(RunStore(running_run), writer, interval_s=0.1):
        with metric_inserts_failing(get_engine()):
            for n in range(1, 11):
                writer.on_step(step(n))
            # Periodic flushes failed...
            wait_until(lambda: writer.consecutive_failures >= 2, 2, "two failed flushes", poll_s=POLL_S)
            assert db.points(running_run) == [] and writer.pending == 30  # ...and kept every point
        writer.on_eval(EvalReport(step=10, epoch=1.0, metrics=dict(EVAL_METRICS), is_best=True))

    points = db.points(running_run)
    assert len(points) == 30 + len(EVAL_METRICS) and writer.pending == 0
    assert [p.step for p in points[:30]] == [n for n in range(1, 11) for _ in range(3)]  # in order, once each


def test_run_heartbeat_writes_best_metrics_so_far(db, running_run: int, writer: MetricWriter, wait_until) -> None:
    writer.on_eval(EvalReport(step=0, epoch=0.0, metrics=dict(EVAL_METRICS), is_best=True))
    with RunHeartbeat(RunStore(running_run), writer, interval_s=0.1):
        wait_until(lambda: db.run(running_run).best_val_acc == 0.12, 2, "best_val_acc written", poll_s=POLL_S)


def test_worker_shutdown_stops_running_trainings(db, running_run: int, writer: MetricWriter,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heartbeat_module, "_worker_stopping", heartbeat_module.threading.Event())
    with RunHeartbeat(RunStore(running_run), writer, interval_s=0.2) as heartbeat:
        signals.worker_shutting_down.send(sender="celery@test", sig="SIGTERM", how="Warm", exitcode=0)
        assert heartbeat.should_stop() and heartbeat.worker_stopping and not heartbeat.cancel_requested


def live_workers() -> int:
    with Session(get_engine()) as session:
        return lifecycle.count_live_workers(session=session, timeout_s=5)


def test_worker_heartbeat_registers_then_removes_the_worker(db) -> None:
    beat = WorkerHeartbeat("celery@test", write_worker_heartbeat, interval_s=0.1)
    beat.start()
    try:
        assert live_workers() == 1
        time.sleep(0.3)  # a few more beats update the same row
        assert live_workers() == 1
    finally:
        beat.stop()
    assert live_workers() == 0


def test_worker_healthcheck_follows_this_hosts_heartbeat(db) -> None:
    from worker import healthcheck

    assert healthcheck.main() == 1  # no worker yet
    beat = WorkerHeartbeat(f"celery@{socket.gethostname()}", write_worker_heartbeat, interval_s=0.1)
    beat.start()
    try:
        assert healthcheck.main() == 0
    finally:
        beat.stop()
    assert healthcheck.main() == 1


def test_device_and_precision_reports_what_the_trainer_chooses() -> None:
    """/workers shows the precision a default run gets on this worker (not a fixed "fp32" on CPU)."""
    import torch

    from ml.precision import choose_precision
    from worker.heartbeat import device_and_precision

    device, precision = device_and_precision()
    assert device == f"cpu, {torch.get_num_threads()} threads"
    assert precision == choose_precision(torch.device("cpu"), True).label()
    assert len(precision) <= 64  # worker_heartbeat.precision is VARCHAR(64) on PostgreSQL
