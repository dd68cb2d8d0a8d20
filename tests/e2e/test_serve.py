"""`trainboard serve`: the web app and one worker from one command, stopped by one Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

pytestmark = pytest.mark.slow

STOP_TIMEOUT_S = 40  # the worker's warm shutdown takes up to WORKER_STOP_TIMEOUT_S (20 s)


def trainboard_command() -> list[str]:
    """The installed console script, as `make run` uses it."""
    script = Path(sys.executable).with_name("trainboard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def start_serve(stack: Any, port: int) -> tuple[Any, int]:
    """Start `trainboard serve`, wait until /api/health counts its worker; (process, worker pid)."""
    serve = stack.start("serve", [*trainboard_command(), "serve", "--host", "127.0.0.1", "--port", str(port)])
    stack.base_url = f"http://127.0.0.1:{port}"
    stack.wait_healthy(lambda health: health["workers"] >= 1, serve)
    banner = re.search(r"Trainboard at (http://\S+) +\(worker pid (\d+)", serve.log_path.read_text())
    assert banner and banner.group(1) == stack.base_url, serve.log_tail()
    return serve, int(banner.group(2))


def is_alive(pid: int) -> bool:
    """True for a live process (a zombie awaiting its parent counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def ctrl_c_and_wait(serve: Any, worker_pid: int) -> float:
    """SIGINT to `trainboard serve` only; seconds until it and its worker are both gone."""
    began = time.monotonic()
    os.kill(serve.pid, signal.SIGINT)
    try:
        returncode = serve.popen.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve still running {STOP_TIMEOUT_S} s after SIGINT:\n{serve.log_tail()}")
    while is_alive(worker_pid) and time.monotonic() - began < STOP_TIMEOUT_S:
        time.sleep(0.1)
    assert not is_alive(worker_pid), f"orphan worker {worker_pid} left behind:\n{serve.log_tail()}"
    assert returncode == 0, serve.log_tail()
    return time.monotonic() - began


def test_serve_starts_web_and_worker_and_one_sigint_stops_both(embedded_stack: Any, unused_port: int) -> None:
    serve, worker_pid = start_serve(embedded_stack, unused_port)
    assert is_alive(worker_pid)

    stopped_after = ctrl_c_and_wait(serve, worker_pid)

    assert stopped_after < STOP_TIMEOUT_S


def test_serve_sigint_mid_training_stops_the_run_and_both_processes(embedded_stack: Any, unused_port: int,
                                                                    cifar_subset: Path) -> None:
    stack = embedded_stack
    serve, worker_pid = start_serve(stack, unused_port)
    with stack.api() as api:
        response = api.post("/api/runs", json={
            "model": "task1", "dataset": {"kind": "imagefolder", "path": str(cifar_subset), "limit_train": 500},
            "hyperparameters": {"epochs": 50, "batch_size": 64, "eval_every": 0.5, "early_stop_count": 0}})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    stack.wait_until(lambda: stack.eval_points(run_id).get(0) == 6, 90, "training started (step 0 evaluated)")

    ctrl_c_and_wait(serve, worker_pid)  # a warm shutdown does not wait for the 50 epochs

    with stack.engine.connect() as connection:
        status, error = connection.execute(text("SELECT status, error FROM run WHERE id = :id"),
                                           {"id": run_id}).one()
    assert status == "failed" and error.startswith("interrupted at step") and "worker shut down" in error


# ------------------------------------------------------------ supervision ---

NEXT_RUN_WITHIN_S = 60


def launch(stack: Any, dataset_root: Path, epochs: int = 50) -> int:
    with stack.api() as api:
        response = api.post("/api/runs", json={
            "model": "task1", "dataset": {"kind": "imagefolder", "path": str(dataset_root), "limit_train": 500},
            "hyperparameters": {"epochs": epochs, "batch_size": 64, "eval_every": 0.5, "log_every": 2,
                                "early_stop_count": 0}})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def run_row(stack: Any, run_id: int) -> dict[str, Any]:
    with stack.engine.connect() as connection:
        return dict(connection.execute(text("SELECT status, error, step, worker_host FROM run WHERE id = :id"),
                                       {"id": run_id}).mappings().one())


def started_training(stack: Any, run_id: int) -> bool:
    return run_row(stack, run_id)["status"] == "running" and bool(stack.eval_points(run_id))


def worker_pids(serve: Any) -> list[int]:
    return [int(pid) for pid in re.findall(r"new worker pid (\d+)", serve.log_path.read_text())]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["sigkill", "sigstop"])
def test_serve_worker_killed_or_stopped_mid_run_is_replaced_and_next_run_starts(
        embedded_stack: Any, unused_port: int, cifar_subset: Path, sig: int) -> None:
    stack = embedded_stack
    stack.env["EMBEDDED_WORKER_SILENT_S"] = "8"
    serve, worker_pid = start_serve(stack, unused_port)
    first, second = launch(stack, cifar_subset), launch(stack, cifar_subset, epochs=1)
    stack.wait_until(lambda: started_training(stack, first), 120, "the first run trains")

    os.kill(worker_pid, sig)  # the worker only: its training process goes on until the supervisor acts
    next_started_after = stack.wait_until(lambda: started_training(stack, second), NEXT_RUN_WITHIN_S,
                                          "the next queued run starts")

    lost = run_row(stack, first)
    assert lost["status"] == "failed" and lost["error"].startswith("worker lost: the embedded worker"), lost
    assert ("has not beaten" if sig == signal.SIGSTOP else "killed by signal 9") in lost["error"]
    assert not is_alive(worker_pid) and worker_pids(serve) and is_alive(worker_pids(serve)[-1])
    assert next_started_after < NEXT_RUN_WITHIN_S
    ctrl_c_and_wait(serve, worker_pids(serve)[-1])


def process_group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_serve_killed_hard_with_a_hung_step_leaves_no_worker(embedded_stack: Any, unused_port: int,
                                                             cifar_subset: Path) -> None:
    stack = embedded_stack
    stack.env.update(TRAINBOARD_TEST_HANG_AT_STEP="2", CANCEL_GRACE_S="3")
    serve, worker_pid = start_serve(stack, unused_port)
    run_id = launch(stack, cifar_subset)
    stack.wait_until(lambda: run_row(stack, run_id)["step"] >= 2, 120, "the step that hangs")
    assert len(process_group_members(worker_pid)) >= 2  # the worker, its training process (and mp resource tracker)

    os.kill(serve.pid, signal.SIGKILL)  # no shutdown code runs in serve

    gone_after = stack.wait_until(lambda: not process_group_members(worker_pid), 60, "worker and training gone")
    assert gone_after < 60
    row = run_row(stack, run_id)
    assert row["status"] == "failed" and "did not stop within 3 s" in row["error"], row


def start_serve_with_two_workers(stack: Any, port: int) -> tuple[Any, list[int]]:
    """`trainboard serve --workers 2`, once /api/health counts both workers; (process, the workers' pids)."""
    serve = stack.start("serve", [*trainboard_command(), "serve", "--port", str(port), "--workers", "2"])
    stack.base_url = f"http://127.0.0.1:{port}"
    stack.wait_healthy(lambda health: health["workers"] >= 2, serve)
    banner = re.search(r"worker pids (\d+), (\d+)", serve.log_path.read_text())
    assert banner, serve.log_tail()
    return serve, [int(banner.group(1)), int(banner.group(2))]


def both_training(stack: Any, first: int, second: int) -> bool:
    return started_training(stack, first) and started_training(stack, second)


def test_serve_two_workers_train_two_runs_at_once_and_stop_together(embedded_stack: Any, unused_port: int,
                                                                     cifar_subset: Path) -> None:
    stack = embedded_stack
    serve, started_pids = start_serve_with_two_workers(stack, unused_port)
    first, second = launch(stack, cifar_subset), launch(stack, cifar_subset)

    stack.wait_until(lambda: both_training(stack, first, second), 120, "both runs training at once")

    assert run_row(stack, first)["worker_host"] != run_row(stack, second)["worker_host"]
    ctrl_c_and_wait(serve, started_pids[0])
    assert not is_alive(started_pids[1])


# Short, so that /api/workers lists the killed worker as lost within seconds; still five heartbeat
# intervals (2 s), so that the web app's watchdog never takes the run that trains on for lost.
HEARTBEAT_TIMEOUT_S = 10


def api_get(stack: Any, path: str) -> Any:
    with stack.api() as api:
        response = api.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def fleet_by_pid(stack: Any) -> dict[int, dict[str, Any]]:
    """GET /api/workers: every worker process with a heartbeat row, by pid."""
    return {worker["pid"]: worker for worker in api_get(stack, "/api/workers")["data"]}


def test_serve_two_workers_one_killed_mid_run_fails_its_run_while_the_other_keeps_training(
        embedded_stack: Any, unused_port: int, cifar_subset: Path) -> None:
    stack = embedded_stack
    stack.env["HEARTBEAT_TIMEOUT_S"] = str(HEARTBEAT_TIMEOUT_S)
    serve, started_pids = start_serve_with_two_workers(stack, unused_port)
    lost_run, survivor = launch(stack, cifar_subset), launch(stack, cifar_subset)
    stack.wait_until(lambda: both_training(stack, lost_run, survivor), 120, "both runs training at once")
    # A run's worker_pid is the Celery worker process that claimed it: one run on each of serve's workers.
    killed_pid, survivor_pid = (api_get(stack, f"/api/runs/{run_id}")["worker_pid"] for run_id in (lost_run, survivor))
    assert sorted([killed_pid, survivor_pid]) == sorted(started_pids)
    assert fleet_by_pid(stack)[killed_pid]["current_run"]["id"] == lost_run
    killed_node = run_row(stack, lost_run)["worker_host"].split("@")[0]
    assert len(process_group_members(killed_pid)) >= 2  # the worker and the training process it supervises

    os.kill(killed_pid, signal.SIGKILL)  # the worker process alone, as the out-of-memory killer would

    # serve's supervisor sees its worker exit (within a second), kills the worker's process group,
    # fails the run it held and starts a new worker: before the watchdog's HEARTBEAT_TIMEOUT_S.
    stack.wait_until(lambda: run_row(stack, lost_run)["status"] != "running", HEARTBEAT_TIMEOUT_S + 30,
                     "the killed worker's run ends")
    lost = run_row(stack, lost_run)
    assert lost["status"] == "failed", lost
    assert lost["error"].startswith(f"worker lost: the embedded worker {killed_node} "), lost
    assert "killed by signal 9" in lost["error"], lost
    stack.wait_until(lambda: not process_group_members(killed_pid), 30, "the killed worker's training process ends")

    # The other run was not touched: still running after the loss, and its steps go on.
    at_loss = run_row(stack, survivor)
    assert at_loss["status"] == "running", at_loss
    stack.wait_until(lambda: run_row(stack, survivor)["step"] > at_loss["step"], 60, "the other run trains on")

    # /api/workers: the killed process is lost (its row stays until the watchdog forgets it), holding
    # no run and listing the lost one as finished; the other worker still trains; the replacement is live.
    stack.wait_until(lambda: worker_pids(serve), 30, "serve starts a worker in place of the killed one")
    replacement_pid = worker_pids(serve)[-1]
    stack.wait_until(lambda: fleet_by_pid(stack).get(killed_pid, {}).get("lost"), HEARTBEAT_TIMEOUT_S + 30,
                     "/api/workers lists the killed worker as lost")
    stack.wait_until(lambda: replacement_pid in fleet_by_pid(stack), 120, "/api/workers lists the new worker")
    fleet = fleet_by_pid(stack)
    killed = fleet[killed_pid]
    assert killed["current_run"] is None, killed
    assert [(run["id"], run["status"]) for run in killed["finished_runs"]] == [(lost_run, "failed")], killed
    assert not fleet[survivor_pid]["lost"] and fleet[survivor_pid]["current_run"]["id"] == survivor, fleet
    replacement = fleet[replacement_pid]
    assert not replacement["lost"] and replacement["current_run"] is None, replacement
    # The killed worker's supervisor started it: same name, next generation (embedded<i>-<serve pid>-<n>).
    assert replacement["hostname"].split("@")[0] == f"{killed_node.rsplit('-', 1)[0]}-2", replacement
    assert sorted(fleet) == sorted([killed_pid, survivor_pid, replacement_pid])

    with stack.api() as api:
        assert api.post(f"/api/runs/{survivor}/cancel").status_code == 202
    assert stack.wait_for_status(survivor, {"succeeded", "failed", "cancelled"}, 60)["status"] == "cancelled"

    # One Ctrl-C stops serve and both of its workers; no worker or training process is left in any
    # worker's process group (each worker runs in a session of its own).
    ctrl_c_and_wait(serve, survivor_pid)
    every_worker = [*started_pids, *worker_pids(serve)]
    stack.wait_until(lambda: not any(process_group_members(pid) for pid in every_worker), 30,
                     "every worker and training process gone")
