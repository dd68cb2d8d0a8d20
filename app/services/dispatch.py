"""Hand runs to the workers through the broker, failing fast when the broker is down.

The web app must answer within seconds, so it connects with a short timeout,
retries once, and never lets Kombu retry forever (its default). A failure
raises BrokerUnavailable, which the API turns into a 503 after removing the run
it had just inserted.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import Iterable, Mapping

from kombu.exceptions import KombuError
from kombu.utils.url import maybe_sanitize_url

from app.core.celery import TRAIN_TASK, celery_app
from app.core.config import Settings, get_settings
from app.services.errors import BrokerUnavailable

logger = logging.getLogger(__name__)


def _connection(settings: Settings, connect_timeout: float):  # type: ignore[no-untyped-def]
    """A Kombu connection for settings.BROKER_URL (per call, so tests can change the URL)."""
    settings.ensure_broker_dirs()
    return celery_app.connection_for_write(
        url=settings.BROKER_URL,
        transport_options=settings.broker_transport_options(),
        connect_timeout=connect_timeout,
    )


def _unavailable(settings: Settings, err: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"the task broker at {maybe_sanitize_url(settings.BROKER_URL)} is unreachable ({err}); "
        "nothing was queued. Start the broker (e.g. Redis) or fix BROKER_URL, then retry."
    )


# Connection refused, timeouts, DNS failures, an unwritable broker folder…
_BROKER_ERRORS = (KombuError, OSError, ConnectionError, TimeoutError)


def dispatch_train_runs(run_ids: Iterable[int], *, settings: Settings | None = None,
                        queued_at: Mapping[int, datetime] | None = None) -> None:
    """Send `worker.tasks.train_run(run_id, queued_at=…)` for each id, over one connection.

    `queued_at` maps a run id to the run's created_at: the worker drops a task whose run
    has another created_at (a different run that got the id).
    Raises BrokerUnavailable when the broker cannot be reached; some tasks may have
    been sent before the failure (claim_run ignores tasks of deleted runs).
    """
    settings = settings or get_settings()
    run_ids = list(run_ids)
    try:
        with _connection(settings, settings.BROKER_CONNECT_TIMEOUT_S) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0.2, interval_step=0,
                                         timeout=settings.BROKER_CONNECT_TIMEOUT_S)
            for run_id in run_ids:
                # By name: the web app never imports worker.tasks (and with it torch).
                when = (queued_at or {}).get(run_id)
                kwargs = {"queued_at": when.isoformat()} if when is not None else {}
                celery_app.send_task(TRAIN_TASK, args=[run_id], kwargs=kwargs, connection=connection,
                                     retry=False, queue=settings.TRAIN_QUEUE)
    except _BROKER_ERRORS as err:
        logger.warning("dispatch of runs %s failed: %s", run_ids, err)
        raise _unavailable(settings, err) from err


def broker_status(settings: Settings | None = None, timeout_s: float = 1.0) -> str:
    """"ok" when the broker accepts a connection (filesystem://: its folders are writable), else "down"."""
    settings = settings or get_settings()
    if settings.uses_filesystem_broker:
        folder = settings.broker_transport_options()["data_folder_out"]
        return "ok" if os.path.isdir(folder) and os.access(folder, os.W_OK) else "down"
    try:
        with _connection(settings, timeout_s) as connection:
            connection.ensure_connection(max_retries=0, timeout=timeout_s)
        return "ok"
    except _BROKER_ERRORS:
        return "down"
