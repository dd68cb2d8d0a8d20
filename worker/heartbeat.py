"""Heartbeats: one background thread per training, and one per worker process.

RunHeartbeat ticks every `interval_s` (Settings.HEARTBEAT_INTERVAL_S: 2 s by
default, at most 10 s) while a run trains. Each tick
flushes the MetricWriter, writes the run's heartbeat and progress, and polls the
cancel flag. The training loop's `should_stop` only reads a threading.Event that
the tick sets, because it is called between every step and evaluation batch and
must cost nothing; the database is read here, on the side, at most every
`interval_s` (so a cancel stops training within about that long plus one step).

The worker heartbeat (WorkerHeartbeat table) lets /api/health count live workers
with any broker, including the filesystem one, which has no remote control. It
starts on Celery's `worker_ready` and ends on `worker_shutdown`.

On `worker_shutting_down` (SIGTERM, SIGINT) every training in this process is
asked to stop at its next step, so that a warm shutdown does not wait for the
end of a training that may take hours.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from typing import Any, Callable, Protocol

from celery import signals

from worker.metric_writer import MetricWriter, Progress

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 2.0


class RunStoreLike(Protocol):
    """What a run heartbeat needs from the database (worker.store.RunStore)."""

    def beat(self, progress: Progress | None, best_metrics: dict[str, Any] | None = None) -> bool: ...
    def cancel_requested(self) -> bool: ...


class RunHeartbeat:
    """The side thread of one training: flush metrics, beat, poll for cancel.

    Use as a context manager around `train(...)` and pass `should_stop`.
    """

    def __init__(self, store: RunStoreLike, writer: MetricWriter, *, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.store = store
        self.writer = writer
        self.interval_s = interval_s
        self.cancel_requested = False  # the user asked to cancel (as opposed to a worker shutdown)
        self.worker_stopping = False
        self._stop_training = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run-heartbeat", daemon=True)

    def should_stop(self) -> bool:
        """For the trainer: called between every step, so it reads a flag and nothing else."""
        return self._stop_training.is_set()

    def request_stop(self, *, worker_stopping: bool = False) -> None:
        self.worker_stopping = self.worker_stopping or worker_stopping
        self._stop_training.set()

    def tick(self) -> None:
        """One round of side work; each part fails on its own and never kills the thread."""
        self._flush_and_beat()
        try:
            if self.store.cancel_requested():
                self.cancel_requested = True
                self._stop_training.set()
        except Exception as err:
            log.warning("polling the cancel flag failed: %s: %s", type(err).__name__, err)

    def _flush_and_beat(self) -> None:
        self.writer.flush()  # logs and keeps the points itself on failure
        try:
            self.store.beat(self.writer.progress, self.writer.best_metrics)
        except Exception as err:
            log.warning("run heartbeat failed: %s: %s", type(err).__name__, err)

    def __enter__(self) -> RunHeartbeat:
        _active_heartbeats.add(self)
        if _worker_stopping.is_set():  # a task that starts while the worker shuts down stops at once
            self.request_stop(worker_stopping=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._closed.set()
        self._thread.join()
        _active_heartbeats.discard(self)
        self._flush_and_beat()  # the final progress (last step, epoch, best metrics) before the run is finished

    def _loop(self) -> None:
        while not self._closed.wait(self.interval_s):
            self.tick()


# ------------------------------------------------------------ worker level ---

_active_heartbeats: set[RunHeartbeat] = set()
_worker_stopping = threading.Event()


class WorkerHeartbeat:
    """A timer thread writing this worker's row of the WorkerHeartbeat table every `interval_s`."""

    def __init__(self, hostname: str, beat: Callable[[str, bool], None], *,
                 interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.hostname = hostname
        self._beat = beat  # (hostname, stopping) -> None; stopping: the worker leaves cleanly
        self.interval_s = interval_s
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-heartbeat", daemon=True)

    def start(self) -> None:
        self._safe_beat(stopping=False)  # at once, so /api/health sees the worker as soon as it is ready
        self._thread.start()

    def stop(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join()
        self._safe_beat(stopping=True)

    def _loop(self) -> None:
        while not self._closed.wait(self.interval_s):
            self._safe_beat(stopping=False)

    def _safe_beat(self, *, stopping: bool) -> None:
        try:
            self._beat(self.hostname, stopping)
        except Exception as err:
            log.warning("worker heartbeat failed: %s: %s", type(err).__name__, err)


_worker_heartbeat: WorkerHeartbeat | None = None


@signals.worker_ready.connect
def _start_worker_heartbeat(sender: Any = None, **_: Any) -> None:
    global _worker_heartbeat
    from app.core.db import init_db
    from worker.store import write_worker_heartbeat

    try:
        init_db()  # the worker may start before the web app has created the schema
    except Exception:
        log.exception("could not bring the database schema up to date")
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    device, precision = device_and_precision()
    beat = functools.partial(write_worker_heartbeat, device=device, precision=precision)
    _worker_heartbeat = WorkerHeartbeat(hostname, beat, interval_s=heartbeat_interval_s())
    _worker_heartbeat.start()


def stop_all_trainings() -> None:
    """Ask every training of this process to stop at its next step (the worker shuts down).

    Called from signal handlers: it only sets flags. The worker's supervisor
    (worker.supervisor) also reads `worker_stopping` and tells its training process.
    """
    _worker_stopping.set()
    for heartbeat in list(_active_heartbeats):
        heartbeat.request_stop(worker_stopping=True)


@signals.worker_shutting_down.connect
def _stop_trainings(**_: Any) -> None:
    # Runs inside Celery's signal handler on the main thread: only set flags here.
    stop_all_trainings()


def worker_stopping() -> threading.Event:
    """Set once this worker process shuts down."""
    return _worker_stopping


@signals.worker_shutdown.connect
def _stop_worker_heartbeat(**_: Any) -> None:
    global _worker_heartbeat
    if _worker_heartbeat is not None:
        _worker_heartbeat.stop()
        _worker_heartbeat = None


def device_and_precision() -> tuple[str | None, str | None]:
    """What this worker trains on, for /workers: e.g. ("cuda:0 NVIDIA H200", "bf16 + channels_last") or
    ("cpu, 2 threads", "fp32"): the precision a run gets by default (ml.precision, as the trainer
    chooses it); amp=false runs train in fp32."""
    try:
        import torch

        from ml.precision import choose_precision
        from ml.trainer import resolve_device

        device = resolve_device("auto")
        precision = choose_precision(device, True).label()
        if device.type == "cuda":
            index = torch.cuda.current_device()
            name = f"cuda:{index} {torch.cuda.get_device_name(index)}"
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible:  # a worker pinned to one GPU of several: say which physical one
                name += f" (CUDA_VISIBLE_DEVICES={visible})"
            return name, precision
        return f"cpu, {torch.get_num_threads()} threads", precision
    except Exception as err:  # a broken CUDA setup must not keep the worker from reporting itself
        log.warning("could not describe the training device: %s: %s", type(err).__name__, err)
        return None, None


def heartbeat_interval_s() -> float:
    """Settings.HEARTBEAT_INTERVAL_S (2 s by default, ≤ 10 s): a cancel is seen within it plus one step."""
    from app.core.config import get_settings

    return float(get_settings().HEARTBEAT_INTERVAL_S)
