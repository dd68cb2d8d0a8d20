"""The worker's side of the one Celery app (app.core.celery): its start-up hooks.

Run a worker with:  celery -A worker.celery_app worker --loglevel=INFO
"""

from __future__ import annotations

from celery.signals import worker_init

from app.core.celery import TRAIN_TASK, celery_app, configure_celery
from app.core.config import get_settings

__all__ = ["TRAIN_TASK", "celery_app", "configure_celery"]


@worker_init.connect
def _create_broker_folders(**_: object) -> None:
    """filesystem://: Kombu does not create its folders. Done when a worker starts (and by the
    web app on start-up and before sending), not on import, so importing has no side effects."""
    get_settings().ensure_broker_dirs()


@worker_init.connect
def _die_with_embedding_parent(**_: object) -> None:
    """An embedded worker (`trainboard serve`) exits when serve goes, however it goes: SIGTERM (a
    warm shutdown, which stops the training) and, if that hangs, SIGKILL to its process group."""
    import os
    import signal

    from app.core.config import EMBEDDED_PARENT_VARIABLE
    from worker.parent import die_with_parent

    parent = os.environ.get(EMBEDDED_PARENT_VARIABLE)
    if parent and parent.isascii() and parent.isdigit():
        die_with_parent(signal.SIGTERM, int(parent), hard_exit_after_s=get_settings().CANCEL_GRACE_S + 10)
