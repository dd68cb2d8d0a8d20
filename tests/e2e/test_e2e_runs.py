"""A run launched through the REST API and trained by a real Celery worker process.

Twice: with the embedded stack (SQLite + Kombu's filesystem broker) and with the
docker-compose one (PostgreSQL + Redis). Then a worker killed with SIGKILL mid-run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from ml.trainer import eval_schedule

pytestmark = pytest.mark.slow

# task1 on 500 images (450 train / 50 val) with batch 64: 7 or 8 steps per epoch (as the trainer
# treats the last partial batch); a one-epoch run evaluates at step 0, mid-epoch and the end.
TINY_HYPERPARAMETERS = {"epochs": 1, "batch_size": 64, "eval_every": 0.5, "log_every": 2, "early_stop_count": 0}
RUN_TIMEOUT_S = 120


def launch(stack: Any, dataset_root: Path, **hyperparameters: Any) -> int:
    body = {"model": "task1", "name": "e2e",
            "dataset": {"kind": "imagefolder", "path": str(dataset_root), "limit_train": 500},
            "hyperparameters": {**TINY_HYPERPARAMETERS, **hyperparameters}}
    with stack.api() as api:
        response = api.post("/api/runs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def evaluated_after_step_0(stack: Any, run_id: int) -> bool:
    return any(step > 0 and count == 6 for step, count in stack.eval_points(run_id).items())


def assert_trains_to_success(stack: Any, dataset_root: Path) -> None:
    stack.start_web()
    stack.start_worker()
    stack.wait_healthy(lambda health: health["workers"] >= 1)
    run_id = launch(stack, dataset_root)

    run = stack.wait_for_status(run_id, {"succeeded", "failed", "cancelled"}, RUN_TIMEOUT_S)

    assert run["status"] == "succeeded", f"{run['error']}\n{stack.logs()}"
    evaluations = sorted(eval_schedule(run["total_steps"], 1, TINY_HYPERPARAMETERS["eval_every"]))
    assert len(evaluations) == 3
    assert stack.eval_points(run_id) == {step: 6 for step in evaluations}  # every evaluation × 6 metrics
    assert run["step"] == run["total_steps"] and set(run["final_metrics"]) == {
        "train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"}
    with stack.api() as api:
        history = [event["kind"] for event in api.get(f"/api/runs/{run_id}/history").json()]
        assert history[0] == "queued" and "started" in history and history[-1] == "succeeded"
        checkpoint = api.get(f"/api/runs/{run_id}/checkpoint")
        assert checkpoint.status_code == 200 and len(checkpoint.content) > 100_000


def test_e2e_run_succeeds_with_embedded_filesystem_broker(embedded_stack: Any, cifar_subset: Path) -> None:
    assert_trains_to_success(embedded_stack, cifar_subset)


@pytest.mark.redis
@pytest.mark.postgres
def test_e2e_run_succeeds_with_redis_and_postgres(server_stack: Any, cifar_subset: Path) -> None:
    assert_trains_to_success(server_stack, cifar_subset)


def test_e2e_worker_killed_mid_run_is_marked_lost_and_keeps_metrics(embedded_stack: Any,
                                                                     cifar_subset: Path) -> None:
    heartbeat_timeout_s = 5
    stack = embedded_stack
    stack.start_web(HEARTBEAT_TIMEOUT_S=str(heartbeat_timeout_s))
    worker = stack.start_worker()
    stack.wait_healthy(lambda health: health["workers"] >= 1)
    run_id = launch(stack, cifar_subset, epochs=20)
    stack.wait_until(lambda: evaluated_after_step_0(stack, run_id), RUN_TIMEOUT_S,
                     "a second evaluation written (the metrics the kill must not lose)")

    before_kill = stack.point_ids(run_id)
    worker.kill_group()  # SIGKILL: no shutdown hook, no last write
    killed_at = time.monotonic()
    run = stack.wait_for_status(run_id, {"succeeded", "failed", "cancelled"}, heartbeat_timeout_s + 15)
    left_running_after = time.monotonic() - killed_at

    assert run["status"] == "failed" and run["error"].startswith("worker lost"), run
    # The last heartbeat ages past the timeout (it is ≤ 2 s old at the kill), then the watchdog's
    # next pass (every 1 s here) fails the run: about the timeout, plus a little slack for a busy CI.
    assert left_running_after <= heartbeat_timeout_s + 3, f"left running after {left_running_after:.1f} s"
    assert before_kill <= stack.point_ids(run_id)  # every metric written before the kill is still there
    assert evaluated_after_step_0(stack, run_id)


# --------------------------------------------------------------- hard stop ---

def run_row(stack: Any, run_id: int) -> dict[str, Any]:
    with stack.engine.connect() as connection:
        return dict(connection.execute(text("SELECT status, error, step FROM run WHERE id = :id"),
                                       {"id": run_id}).mappings().one())


def events(stack: Any, run_id: int) -> list[tuple[str, str]]:
    with stack.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            text("SELECT kind, message FROM run_event WHERE run_id = :id ORDER BY id"), {"id": run_id})]


def assert_hung_run_cancel_is_forced_and_next_run_starts(stack: Any, dataset_root: Path) -> None:
    stack.start_web()
    stack.start_worker()  # as compose runs it: `celery -A worker.celery_app worker --pool=solo`
    stack.wait_healthy(lambda health: health["workers"] >= 1)
    hung, following = launch(stack, dataset_root, epochs=20), launch(stack, dataset_root)
    stack.wait_until(lambda: run_row(stack, hung)["step"] >= 2, RUN_TIMEOUT_S, "the step that hangs")
    time.sleep(1)
    assert run_row(stack, hung)["status"] == "running" and run_row(stack, following)["status"] == "queued"

    with stack.api() as api:
        assert api.post(f"/api/runs/{hung}/cancel").status_code == 202
    cancelled_at = time.monotonic()
    stack.wait_until(lambda: run_row(stack, following)["status"] != "queued", 60, "the next run starts")

    assert time.monotonic() - cancelled_at < 60
    assert run_row(stack, hung)["status"] == "cancelled"
    kind, message = events(stack, hung)[-1]
    assert kind == "cancelled" and message.startswith("cancelled (forced)")


def test_e2e_hung_step_cancel_is_forced_embedded(embedded_stack: Any, cifar_subset: Path) -> None:
    embedded_stack.env.update(TRAINBOARD_TEST_HANG_AT_STEP="2", CANCEL_GRACE_S="3")
    assert_hung_run_cancel_is_forced_and_next_run_starts(embedded_stack, cifar_subset)


@pytest.mark.redis
@pytest.mark.postgres
def test_e2e_hung_step_cancel_is_forced_with_redis_and_postgres(server_stack: Any, cifar_subset: Path) -> None:
    server_stack.env.update(TRAINBOARD_TEST_HANG_AT_STEP="2", CANCEL_GRACE_S="3")
    assert_hung_run_cancel_is_forced_and_next_run_starts(server_stack, cifar_subset)


# ------------------------------------------------------- no doubled work ---

@pytest.mark.redis
@pytest.mark.postgres
def test_e2e_two_workers_never_train_the_same_run(server_stack: Any, cifar_subset: Path) -> None:
    from celery import Celery

    from app.core.config import Settings
    from worker.celery_app import TRAIN_TASK, configure_celery

    stack = server_stack
    stack.start_web()
    stack.start_worker("worker-a")
    stack.start_worker("worker-b")
    stack.wait_healthy(lambda health: health["workers"] >= 2)
    run_ids = [launch(stack, cifar_subset) for _ in range(2)]
    # The same tasks again, twice: duplicates as a redelivery or a double dispatch would make them.
    sender = Celery("duplicates")
    configure_celery(sender, Settings(_env_file=None, BROKER_URL=stack.env["BROKER_URL"],
                                      DATA_DIR=stack.env["DATA_DIR"]))
    for _ in range(2):
        for run_id in run_ids:
            sender.send_task(TRAIN_TASK, args=[run_id], queue="train")

    for run_id in run_ids:
        run = stack.wait_for_status(run_id, {"succeeded", "failed", "cancelled"}, RUN_TIMEOUT_S * 2)
        assert run["status"] == "succeeded", f"{run['error']}\n{stack.logs()}"
    stack.wait_until(lambda: dropped_tasks(stack) == 4, 60, "every duplicate dropped")
    for run_id in run_ids:
        kinds = [kind for kind, _ in events(stack, run_id)]
        assert kinds.count("started") == 1 and "resumed" not in kinds, kinds
        total_steps = stack.wait_for_status(run_id, {"succeeded"}, 5)["total_steps"]
        assert stack.eval_points(run_id) == {step: 6 for step in eval_schedule(total_steps, 1, 0.5)}


def dropped_tasks(stack: Any) -> int:
    """Tasks the workers dropped, from their whole logs."""
    return sum(p.log_path.read_text(errors="replace").count("is not claimable; dropping the task")
               for p in stack.processes if p.name.startswith("worker"))
