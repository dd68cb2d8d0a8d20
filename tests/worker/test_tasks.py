"""The train_run task, called in-process (no broker) on a tiny real CIFAR-10 subset and a SQLite database."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import Session

from app.core.db import get_engine
from app.services import lifecycle
from app.services.runs import request_cancel
from ml.trainer import eval_schedule
from worker import tasks, training
from worker.tasks import train_run

pytestmark = pytest.mark.slow

EVAL_METRICS = {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"}
# 450 train images / batch 64: 7 or 8 steps per epoch (as the trainer treats the last partial batch),
# evaluations at step 0, mid-epoch and the end.
TINY = dict(epochs=1, batch_size=64, eval_every=0.5, log_every=2, early_stop_count=0)


def eval_steps(points) -> Counter:
    """{step: evaluation metric points at that step}."""
    return Counter(p.step for p in points if p.name in EVAL_METRICS)


def every_evaluation(run, epochs: int) -> dict[int, int]:
    """Six points at each step the trainer's schedule evaluates, for the run's actual length."""
    return {step: 6 for step in eval_schedule(run.total_steps // epochs, epochs, TINY["eval_every"])}


def evaluated_after_step_0(points) -> bool:
    return any(step > 0 and count == 6 for step, count in eval_steps(points).items())


def cancel(run_id: int) -> None:
    with Session(get_engine()) as session:
        request_cancel(session=session, run_id=run_id)


@pytest.fixture
def in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Train in the test's process (not a supervised child), so that patches reach the training."""
    monkeypatch.setattr(tasks, "TRAIN_IN_CHILD_PROCESS", False)


def test_train_run_succeeds_with_every_evaluation_in_db(db, worker_settings, cifar_subset: Path, in_this_process,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    batches = []
    original = lifecycle.add_metric_points
    monkeypatch.setattr(lifecycle, "add_metric_points",
                        lambda **kw: batches.append(len(kw["points"])) or original(**kw))
    run_id = db.queue(db.tiny_dataset(cifar_subset), **TINY)

    assert train_run(run_id) == "succeeded"

    run = db.run(run_id)
    points = db.points(run_id)
    assert run.status == "succeeded" and run.finished_at and run.error is None
    assert eval_steps(points) == every_evaluation(run, epochs=1) and len(eval_steps(points)) == 3
    assert {"train/step_loss", "train/lr", "train/images_per_s"} <= {p.name for p in points}
    assert len(points) == sum(batches) and len(batches) <= 6  # batched: a few transactions, never one per point
    assert set(run.final_metrics) == EVAL_METRICS and 0 <= run.final_metrics["test/acc"] <= 1
    assert run.best_val_acc is not None and run.step == run.total_steps and run.epoch == 1.0
    assert run.checkpoint_path == f"{run_id}/checkpoint.pt"
    assert (worker_settings.ARTIFACTS_DIR / run.checkpoint_path).is_file()
    assert all(0 <= p.time < 120 for p in points)


def test_train_run_bad_dataset_path_fails_with_traceback(db, cifar_subset: Path, tmp_path: Path) -> None:
    doomed = shutil.copytree(cifar_subset, tmp_path / "doomed")
    run_id = db.queue(db.tiny_dataset(doomed), **TINY)
    shutil.rmtree(doomed / "train")  # the folder vanished between submission and training

    assert train_run(run_id) == "failed"

    run = db.run(run_id)
    assert run.status == "failed" and run.finished_at is not None
    assert run.error.startswith("DatasetError: ") and "train" in run.error.splitlines()[0]
    assert "Traceback (most recent call last)" in run.error and "load_imagefolder" in run.error
    assert db.events(run_id)[-1].message.startswith("failed: DatasetError")


def test_train_run_cancel_while_running_stops_within_5s(db, worker_settings, cifar_subset: Path,
                                                        wait_until: Callable[..., float]) -> None:
    run_id = db.queue(db.tiny_dataset(cifar_subset), **dict(TINY, epochs=50))
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(train_run(run_id)))
    worker.start()
    wait_until(lambda: evaluated_after_step_0(db.points(run_id)), 180, "the second evaluation", poll_s=0.05)

    cancelled_at = time.monotonic()
    cancel(run_id)
    worker.join(timeout=30)
    stopped_after = time.monotonic() - cancelled_at

    assert outcome == ["cancelled"] and stopped_after < 5, f"stopped after {stopped_after:.1f} s"
    run = db.run(run_id)
    assert run.status == "cancelled" and run.finished_at is not None
    assert evaluated_after_step_0(db.points(run_id))  # metrics kept
    assert (worker_settings.ARTIFACTS_DIR / run.checkpoint_path).is_file()  # so is the last checkpoint


def test_train_run_cancel_while_queued_never_starts(db, worker_settings, cifar_subset: Path) -> None:
    run_id = db.queue(db.tiny_dataset(cifar_subset), **TINY)
    cancel(run_id)

    assert train_run(run_id) == "skipped"

    run = db.run(run_id)
    assert run.status == "cancelled" and run.started_at is None
    assert db.points(run_id) == []
    assert not (worker_settings.ARTIFACTS_DIR / str(run_id)).exists()


class WorkerDied(BaseException):
    """Stands in for the process vanishing: no `except Exception` sees it."""


def test_train_run_redelivered_run_resumes_from_checkpoint(db, cifar_subset: Path, in_this_process,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = db.queue(db.tiny_dataset(cifar_subset), **dict(TINY, epochs=2))

    def die_after_step_6(self, report) -> None:
        if report.step >= 6:
            raise WorkerDied

    # First delivery: the worker "dies" at step 6, after the mid-epoch checkpoint (step 4), without
    # finishing the run.
    monkeypatch.setattr(training.RunRecorder, "on_step", die_after_step_6, raising=False)
    monkeypatch.setattr(training, "fail_run", lambda store, err: None)
    with pytest.raises(WorkerDied):
        train_run(run_id)
    assert db.run(run_id).status == "running"
    monkeypatch.undo()
    monkeypatch.setattr(tasks, "TRAIN_IN_CHILD_PROCESS", False)

    assert train_run(run_id) == "succeeded"  # the redelivery

    run = db.run(run_id)
    assert run.resumed_count == 1
    assert "resumed from checkpoint at step 4" in [e.message for e in db.events(run_id)]
    # Each evaluation once: the points written after the checkpoint's step were replaced, not duplicated.
    assert eval_steps(db.points(run_id)) == every_evaluation(run, epochs=2)
    assert run.step == run.total_steps


@pytest.mark.parametrize("queued_at", ["2000-01-01T00:00:00+00:00", "not a time"])
def test_train_run_queued_for_another_run_is_dropped(db, queued_at: str) -> None:
    run_id = db.queue({"name": "cifar10-sample"}, **TINY)

    assert train_run(run_id, queued_at=queued_at) == "skipped"

    run = db.run(run_id)
    assert run.status == "queued" and run.started_at is None


def test_train_run_with_its_own_queued_at_is_claimed(db, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = db.queue({"name": "cifar10-sample"}, **TINY)
    claimed: list[int] = []
    monkeypatch.setattr(tasks, "train_in_child", lambda run_id, *args, **kwargs: claimed.append(run_id) or "done")

    assert train_run(run_id, queued_at=db.run(run_id).created_at.isoformat()) == "done"

    assert claimed == [run_id] and db.run(run_id).status == "running"
