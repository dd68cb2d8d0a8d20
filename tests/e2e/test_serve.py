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

STOP_TIMEOUT_S = 15


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
    deadline = time.monotonic() + 90
    while stack.eval_points(run_id).get(0) != 6:  # training has started
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.2)

    ctrl_c_and_wait(serve, worker_pid)  # a warm shutdown does not wait for the 50 epochs

    with stack.engine.connect() as connection:
        status, error = connection.execute(text("SELECT status, error FROM run WHERE id = :id"),
                                           {"id": run_id}).one()
    assert status == "failed" and error.startswith("interrupted at step") and "worker shut down" in error
