"""The one Celery app, configured from the same Settings as the web app and the workers.

It lives in the core so that the web app (app.services.dispatch) sends tasks by name without
importing worker/; worker.celery_app adds the worker's start-up hooks to this same app. It must
stay light: no torch, no ml. The task itself lives in worker/tasks.py (loaded by workers only).

Status lives in the database, not in Celery results (task_ignore_result). A
task is acknowledged only after it returns (acks_late) and is requeued when its
worker process dies (task_reject_on_worker_lost), so a lost run is redelivered;
`app.services.lifecycle.claim_run` then decides whether to resume it.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from app.core.config import Settings, get_settings

TRAIN_TASK = "worker.tasks.train_run"
# A little longer than MAX_RUN_SECONDS: the soft limit lets the task record the failure.
SOFT_LIMIT_MARGIN_S = 60


def configure_celery(app: Celery, settings: Settings) -> None:
    """Apply `settings` to a Celery app (broker, queue, reliability options)."""
    app.conf.update(
        broker_url=settings.BROKER_URL,
        # For Redis this carries visibility_timeout > MAX_RUN_SECONDS: Redis redelivers
        # an unacknowledged task after that long, even if it is still running.
        broker_transport_options=settings.broker_transport_options(),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.BROKER_CONNECT_TIMEOUT_S,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a worker holds only the task it trains
        worker_concurrency=1,  # one training per worker (one worker per GPU)
        # The solo pool trains in the worker's main process, so a warm shutdown reaches the
        # training (it stops at the next step) instead of waiting for hours behind a prefork child.
        worker_pool="solo",
        task_default_queue=settings.TRAIN_QUEUE,
        task_queues=(Queue(settings.TRAIN_QUEUE),),
        task_routes={TRAIN_TASK: {"queue": settings.TRAIN_QUEUE}},
        task_soft_time_limit=settings.MAX_RUN_SECONDS,
        task_time_limit=settings.MAX_RUN_SECONDS + SOFT_LIMIT_MARGIN_S,
        worker_hijack_root_logger=False,
    )


celery_app = Celery("trainboard", include=["worker.tasks"])
configure_celery(celery_app, get_settings())
