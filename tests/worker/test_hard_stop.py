"""A hard stop: the training runs in a supervised child process that is killed when it does not stop.

train_run is called in the test's process (as the worker's solo pool calls it); the training
really runs in a spawned child, which a test-only variable makes hang inside a training step.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.core.config import get_settings
from worker.tasks import train_run
from worker.training import HANG_AT_STEP_VARIABLE

from .test_tasks import TINY, cancel

pytestmark = pytest.mark.slow

GRACE_S = 3
STARTUP_S = 120  # spawning the child imports torch: slow on a busy 2-core machine


@pytest.fixture
def hard_stop_settings(worker_settings, monkeypatch: pytest.MonkeyPatch):
    """A short grace period (the child inherits the environment)."""
    monkeypatch.setenv("CANCEL_GRACE_S", str(GRACE_S))
    get_settings.cache_clear()
    return get_settings()


def start_task(run_id: int) -> tuple[threading.Thread, list[str]]:
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(train_run(run_id)), daemon=True)
    thread.start()
    return thread, outcome


def reached_step(db, run_id: int, step: int) -> bool:
    return any(p.step >= step and p.name == "train/step_loss" for p in db.points(run_id))


def test_hung_step_cancel_is_forced_and_recorded_cancelled(db, hard_stop_settings, cifar_subset: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           wait_until: Callable[..., float]) -> None:
    monkeypatch.setenv(HANG_AT_STEP_VARIABLE, "2")
    run_id = db.queue(db.tiny_dataset(cifar_subset), **dict(TINY, epochs=50))
    thread, outcome = start_task(run_id)
    wait_until(lambda: reached_step(db, run_id, 2), STARTUP_S, "the step that hangs", poll_s=0.05)

    cancelled_at = time.monotonic()
    cancel(run_id)
    thread.join(GRACE_S + 30)
    stopped_after = time.monotonic() - cancelled_at

    assert outcome == ["cancelled"], f"task still running {stopped_after:.0f} s after the cancel"
    assert GRACE_S <= stopped_after < GRACE_S + 30
    run = db.run(run_id)
    assert run.status == "cancelled" and run.finished_at is not None
    last = db.events(run_id)[-1]
    assert last.kind == "cancelled" and last.message.startswith("cancelled (forced)")
    assert reached_step(db, run_id, 2)  # the metrics written before the hang are kept


def test_run_past_max_run_seconds_in_hung_training_is_forced(db, hard_stop_settings, cifar_subset: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Hang at the start, before the first stop check: loading the data can outlast the 1 s limit
    # on a busy machine, and a hang at a later step would then never be reached.
    monkeypatch.setenv(HANG_AT_STEP_VARIABLE, "0")
    monkeypatch.setenv("MAX_RUN_SECONDS", "1")
    get_settings.cache_clear()
    run_id = db.queue(db.tiny_dataset(cifar_subset), **dict(TINY, epochs=50))

    assert train_run(run_id) == "cancelled"

    run = db.run(run_id)
    messages = [event.message for event in db.events(run_id)]
    assert run.status == "cancelled"
    assert any("passed MAX_RUN_SECONDS (1 s)" in message for message in messages)
    assert messages[-1].startswith("cancelled (forced): the run passed MAX_RUN_SECONDS")


def test_run_past_max_run_seconds_stops_at_its_next_step(db, hard_stop_settings, cifar_subset: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_RUN_SECONDS", "1")
    monkeypatch.setenv("CANCEL_GRACE_S", "600")  # it stops by itself, long before
    get_settings.cache_clear()
    run_id = db.queue(db.tiny_dataset(cifar_subset), **dict(TINY, epochs=500))

    assert train_run(run_id) == "cancelled"

    messages = [event.message for event in db.events(run_id)]
    assert any("passed MAX_RUN_SECONDS" in message for message in messages)
    assert not messages[-1].startswith("cancelled (forced)")


def training_child_pids() -> list[int]:
    """This process's children that run the training (spawn children, not the resource tracker)."""
    children = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    return [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_training_process_killed_fails_the_run_and_frees_the_task(db, hard_stop_settings, cifar_subset: Path,
                                                                  wait_until: Callable[..., float]) -> None:
    run_id = db.queue(db.tiny_dataset(cifar_subset), **dict(TINY, epochs=50))
    thread, outcome = start_task(run_id)
    wait_until(lambda: reached_step(db, run_id, 2), STARTUP_S, "training", poll_s=0.05)

    for pid in training_child_pids():
        os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer would
    thread.join(30)

    assert outcome == ["failed"]
    run = db.run(run_id)
    assert run.status == "failed" and "killed by signal 9" in run.error


def test_worker_shutdown_stops_the_training_process_at_its_next_step(db, hard_stop_settings, cifar_subset: Path,
                                                                     wait_until: Callable[..., float]) -> None:
    from worker import supervisor
    from worker.store import RunStore

    run_id = db.queue(db.tiny_dataset(cifar_subset), **dict(TINY, epochs=50))
    store = RunStore(run_id)
    assert store.claim("celery@test") is not None
    stopping = threading.Event()
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(supervisor.train_in_child(
        run_id, store, get_settings(), worker_stopping=stopping)), daemon=True)
    thread.start()
    wait_until(lambda: reached_step(db, run_id, 2), STARTUP_S, "training", poll_s=0.05)

    stopping.set()
    thread.join(GRACE_S + 20)

    assert outcome == ["failed"]
    run = db.run(run_id)
    assert run.error.startswith("interrupted at step") and "worker shut down" in run.error
