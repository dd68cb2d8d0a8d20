"""The `train_run` Celery task: claim a run, train it with live metrics, finish it.

The task takes a run id (the database holds everything else) and never waits
on another task. Whatever happens, a run it claimed does not stay `running`:
training ends as succeeded (also after early stopping), cancelled (metrics and
the last checkpoint kept) or failed (with the exception's type, message and a
traceback excerpt in `error`). If even that last write is impossible (the
database is gone), the watchdog fails the run once its heartbeat is stale.

A redelivered task (its worker died) finds the run still `running`; claim_run
counts the redelivery and the task resumes from the run's checkpoint.

The claim happens in the worker's process; the training itself runs in a child
process that worker.supervisor watches and kills when it does not stop in time
(a hung step): the worker stays free for the next run whatever the training does.
"""

from __future__ import annotations

import logging
import socket
from datetime import datetime

from celery import current_task

from app.core.config import get_settings
from app.models import RunStatus
from worker.celery_app import TRAIN_TASK, celery_app
from worker.heartbeat import worker_stopping
from worker.store import RunStore
from worker.supervisor import train_in_child
from worker.training import fail_run, train_claimed_run

log = logging.getLogger(__name__)

# The training runs in a child process the task supervises (worker.supervisor), so that a hung
# step can be killed. Tests that patch the training in this process turn it off.
TRAIN_IN_CHILD_PROCESS = True


@celery_app.task(name=TRAIN_TASK)
def train_run(run_id: int, queued_at: str | None = None) -> str:
    """Train run `run_id`; returns the status it ended in ("skipped" when it was not ours to train).

    `queued_at` is the run's created_at when the task was sent: a run with that id but another
    creation time is not the one this task was queued for.
    """
    try:
        created_at = datetime.fromisoformat(queued_at) if queued_at else None
    except (TypeError, ValueError):
        log.warning("run %s: unreadable queued_at %r; dropping the task", run_id, queued_at)
        return "skipped"
    store = RunStore(run_id)
    run = store.claim(worker_hostname(), queued_at=created_at)
    if run is None:  # cancelled while queued, deleted, finished, another run, trained elsewhere, redelivered too often
        log.info("run %s is not claimable; dropping the task", run_id)
        return "skipped"
    if not TRAIN_IN_CHILD_PROCESS:
        return train_claimed_run(run, store)
    try:
        return train_in_child(run_id, store, get_settings(), worker_stopping=worker_stopping())
    except Exception as err:  # e.g. the training process could not start: the run must not stay running
        fail_run(store, err)
        return RunStatus.failed.value


def worker_hostname() -> str:
    """Celery's node name (celery@host) inside a worker; the host name when called directly."""
    request = getattr(current_task, "request", None)
    return getattr(request, "hostname", None) or socket.gethostname()
