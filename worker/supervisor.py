"""The training runs in a child process that the task supervises, so that it can always be stopped.

A cancel reaches the training cooperatively (the child's heartbeat thread polls
the flag and the trainer stops between steps). But a step, a data load or a
CUDA call can hang, and then nothing in that process answers any more. The
Celery task therefore trains in a child process (`spawn`: nothing inherited
from the worker's threads) and watches it from the worker's main process:

- a cancel not answered within CANCEL_GRACE_S: the child is killed and the run
  recorded as cancelled, with an event saying it was forced;
- MAX_RUN_SECONDS (the solo pool ignores Celery's time limits): the run is asked
  to stop like a cancel, and killed the same way if it does not;
- the worker shuts down (SIGTERM): the child is told (it stops at its next step
  and records the interruption), and killed after CANCEL_GRACE_S;
- the child dies on its own (OOM killer, segfault) before finishing the run:
  the run is failed with the exit code or signal.

While the child starts (spawning imports torch: seconds), the supervisor beats the run's
heartbeat for it; once the child is ready its own heartbeat thread takes over, so a stopped
child still goes silent for the watchdog.

The worker process itself never trains, so after any of these it is free to take
the next run at once. The child dies with the worker (PR_SET_PDEATHSIG, and a
check of its parent's pid), so a killed worker never leaves a training behind.

Metrics keep flowing through the child's MetricWriter and RunHeartbeat exactly
as before; only points buffered since the heartbeat thread's last flush (at most
HEARTBEAT_INTERVAL_S of step metrics) are lost when the child is killed, and the
forced event says so.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from app.core.config import Settings
from app.models import RunStatus
from app.services import lifecycle
from worker.parent import die_with_parent
from worker.store import RunStore

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.5


# ------------------------------------------------------------------ child ---

def child_main(run_id: int, parent_pid: int, ready: Any = None) -> None:
    """The child process: train the claimed run `run_id` (worker.training.train_claimed_run).

    `ready` (an Event) is set once the imports are done: from then on the run's own heartbeat
    thread beats; until then the supervisor beats for it.
    """
    die_with_parent(signal.SIGKILL, parent_pid)
    # Ctrl-C in a terminal reaches the whole process group: the worker decides, and tells us by SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s: %(levelname)s/train-{run_id}] %(message)s")
    from worker import heartbeat, training  # after the signal set-up: importing torch takes seconds

    # Only flags are set in a signal handler; the training stops at its next step.
    signal.signal(signal.SIGTERM, lambda *_: heartbeat.stop_all_trainings())
    store = RunStore(run_id)
    run = store.load()
    if ready is not None:
        ready.set()
    status = training.train_claimed_run(run, store)
    log.info("run %s ended: %s", run_id, status)
    # Everything is written and committed: skip the interpreter's teardown (seconds with torch
    # loaded on a busy machine), which a worker's warm shutdown would otherwise wait for.
    logging.shutdown()
    os._exit(0)


# ----------------------------------------------------------------- parent ---

@dataclass
class Stop:
    """Why the supervisor asked the training to stop, and when."""

    reason: str  # "cancel" | "time_limit" | "shutdown"
    at: float


def train_in_child(run_id: int, store: RunStore, settings: Settings, *,
                   worker_stopping: threading.Event, poll_interval_s: float = POLL_INTERVAL_S) -> str:
    """Train run `run_id` (claimed already) in a child process; returns the run's final status."""
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=child_main, args=(run_id, os.getpid(), ready), name=f"train-run-{run_id}")
    child.start()
    log.info("run %s trains in process %s", run_id, child.pid)
    try:
        return _supervise(child, ready, run_id, store, settings, worker_stopping, poll_interval_s)
    finally:
        if child.is_alive():  # leaving abnormally (e.g. a Celery time limit in a prefork pool)
            child.kill()
            child.join()


def _supervise(child: multiprocessing.process.BaseProcess, ready: Any, run_id: int, store: RunStore,
               settings: Settings, worker_stopping: threading.Event, poll_interval_s: float) -> str:
    started = time.monotonic()
    last_poll = 0.0
    stop: Stop | None = None
    while True:
        child.join(poll_interval_s)
        if child.exitcode is not None:
            break
        now = time.monotonic()
        if not ready.is_set() and now - last_poll >= settings.HEARTBEAT_INTERVAL_S:
            beat_for_starting_child(store)  # spawning imports torch: seconds, longer than a short timeout
        if stop is not None:
            if now - stop.at > settings.CANCEL_GRACE_S:
                child.kill()
                child.join()
                return record_forced_stop(store, stop, settings)
            continue
        if worker_stopping.is_set():
            stop = Stop("shutdown", now)
            log.info("worker shutting down: asking the training of run %s to stop", run_id)
            with suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        elif now - started > settings.MAX_RUN_SECONDS:
            stop = Stop("time_limit", now)
            store.request_stop(f"stopping: the run passed MAX_RUN_SECONDS ({settings.MAX_RUN_SECONDS} s)")
        elif now - last_poll >= settings.HEARTBEAT_INTERVAL_S:
            last_poll = now
            if cancel_requested(store):
                stop = Stop("cancel", now)
    log.info("the training process of run %s exited (code %s)", run_id, child.exitcode)
    return after_child_exit(store, child.exitcode)


def beat_for_starting_child(store: RunStore) -> None:
    try:
        store.call(lifecycle.heartbeat_run)
    except Exception as err:
        log.warning("run %s heartbeat failed: %s: %s", store.run_id, type(err).__name__, err)


def cancel_requested(store: RunStore) -> bool:
    try:
        return store.cancel_requested()
    except Exception as err:  # the database blinked: ask again at the next poll
        log.warning("polling run %s for a cancel failed: %s: %s", store.run_id, type(err).__name__, err)
        return False


def record_forced_stop(store: RunStore, stop: Stop, settings: Settings) -> str:
    """The child was killed: the run is cancelled (failed for a worker shutdown), and its history says why."""
    grace = f"{settings.CANCEL_GRACE_S:g} s"
    lost = (f"metric points of the last {settings.HEARTBEAT_INTERVAL_S:g} s before the kill may be missing; "
            "the checkpoint of the last evaluation is kept")
    if stop.reason == "shutdown":
        error = f"interrupted: the worker shut down and the training did not stop within {grace}; it was killed"
        store.finish(RunStatus.failed, error=error, message=f"failed (forced): {error}; {lost}")
        return RunStatus.failed.value
    why = ("the run passed MAX_RUN_SECONDS" if stop.reason == "time_limit" else "the run was cancelled")
    message = (f"cancelled (forced): {why} and its training did not stop within {grace}, so its process "
               f"was killed; {lost}")
    log.warning("run %s: %s", store.run_id, message)
    store.finish(RunStatus.cancelled, message=message)  # nothing written when the run had ended meanwhile
    return store.status() or RunStatus.cancelled.value


def after_child_exit(store: RunStore, exitcode: int) -> str:
    """The child ended by itself: normally it finished the run; if not, it died and the run fails."""
    status = store.status()
    if status != RunStatus.running.value:
        return status or "skipped"
    how = f"was killed by signal {-exitcode}" if exitcode < 0 else f"exited with code {exitcode}"
    hint = " (SIGKILL: often the out-of-memory killer)" if exitcode == -signal.SIGKILL else ""
    error = f"the training process {how}{hint} before finishing the run"
    log.error("run %s: %s", store.run_id, error)
    store.finish(RunStatus.failed, error=error)
    return RunStatus.failed.value
