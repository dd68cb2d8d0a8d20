"""MetricWriter: the trainer callback that turns reports into metric points, written in batches.

Every hook runs on the training thread between steps, so a hook only appends to
an in-memory buffer (a few microseconds). The buffer reaches the database in
batched transactions:

- at every evaluation, synchronously: an evaluation's metrics are durable
  before training goes on;
- from the run's heartbeat thread (worker.heartbeat.RunHeartbeat) at least
  every HEARTBEAT_INTERVAL_S (2 s by default), so that step metrics show up live;
- at the end of training (`close`).

A failed write keeps the points buffered and is retried; only after
`max_failures` consecutive failures (by default about a minute of outage at
one attempt per 2 s, as long as the watchdog's default heartbeat timeout) does
the writer give up, by raising MetricWriteError on the training thread, so the
run fails loudly instead of silently losing its metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

from ml.trainer import Callback, EvalReport, StepReport, TrainStart

log = logging.getLogger(__name__)

# Names of the points written at each step report (every config.log_every steps).
STEP_LOSS = "train/step_loss"
LEARNING_RATE = "train/lr"
IMAGES_PER_S = "train/images_per_s"


class PendingPoint(NamedTuple):
    """A metric point waiting in the buffer; `time` is seconds since the run started."""

    name: str
    step: int
    epoch: float
    time: float
    value: float


@dataclass(frozen=True)
class Progress:
    """Where the training is, for the run's progress columns."""

    step: int
    epoch: float
    total_steps: int
    images_per_s: float | None


# Writes one batch of points in one transaction; raises when the batch was not written.
PointSink = Callable[[Sequence[PendingPoint]], None]


class MetricWriteError(RuntimeError):
    """The metric points could not be written, even after retries."""


class MetricWriter(Callback):
    """Buffer the run's metric points and flush them in batched transactions.

    `write_points` receives each batch; a run's points arrive in one call per
    flush, never one per point. `time_offset` is the training time already
    spent before this process started (non-zero when resuming from a checkpoint).
    """

    def __init__(self, write_points: PointSink, *, time_offset: float = 0.0, max_failures: int = 30,
                 retry_delay_s: float = 0.25, max_retry_delay_s: float = 2.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._write_points = write_points
        self._time_offset = time_offset
        self._clock = clock
        self._started = clock()
        self._buffer: list[PendingPoint] = []
        self._buffer_lock = threading.Lock()  # held only to append or cut: never during a write
        self._flush_lock = threading.Lock()  # one flush at a time, so batches stay in order
        self.max_failures = max_failures
        self.retry_delay_s = retry_delay_s
        self.max_retry_delay_s = max_retry_delay_s
        self.progress: Progress | None = None
        self.best_metrics: dict[str, float] | None = None  # the evaluation with the best val/acc so far
        self.consecutive_failures = 0
        self.last_error: BaseException | None = None
        self.flushes = 0  # successful writes (transactions)
        self.points_written = 0
        # Points from add_points (system samples) ride along with the trainer's points; alone, they
        # wait up to this long before they get a transaction of their own.
        self.passenger_max_wait_s = 30.0
        self._has_own_points = False  # the buffer holds trainer points (not only passengers)
        self._passengers_since: float | None = None  # when the oldest waiting passenger arrived

    # ------------------------------------------------------------ callbacks ---

    def on_train_start(self, info: TrainStart) -> None:
        self._started = self._clock()
        self.progress = Progress(step=info.start_step, epoch=info.start_step / max(info.steps_per_epoch, 1),
                                 total_steps=info.total_steps, images_per_s=None)

    def on_step(self, report: StepReport) -> None:
        self._raise_if_given_up()
        now = self.elapsed()
        self._append([
            PendingPoint(STEP_LOSS, report.step, report.epoch, now, report.loss),
            PendingPoint(LEARNING_RATE, report.step, report.epoch, now, report.lr),
            PendingPoint(IMAGES_PER_S, report.step, report.epoch, now, report.images_per_s),
        ])
        self.progress = Progress(step=report.step, epoch=report.epoch, total_steps=report.total_steps,
                                 images_per_s=report.images_per_s)

    def on_eval(self, report: EvalReport) -> None:
        now = self.elapsed()
        self._append([PendingPoint(name, report.step, report.epoch, now, value)
                      for name, value in report.metrics.items()])
        if report.is_best:
            self.best_metrics = dict(report.metrics)
        if self.progress is not None:
            self.progress = Progress(step=report.step, epoch=report.epoch, total_steps=self.progress.total_steps,
                                     images_per_s=self.progress.images_per_s)
        self.flush_durably()

    def add_points(self, points: list[PendingPoint]) -> None:
        """Buffer points from another source (the system sampler's thread).

        They go out with the next flush that has trainer points, or on their own once they
        have waited `passenger_max_wait_s`: sampling adds no transaction of its own while
        training reports, and its points still show up during a long evaluation.
        """
        with self._buffer_lock:
            if self._passengers_since is None:
                self._passengers_since = self._clock()
            self._buffer.extend(points)

    # --------------------------------------------------------------- writes ---

    def elapsed(self) -> float:
        """Seconds since the run started, training time before a resume included."""
        return self._time_offset + self._clock() - self._started

    @property
    def pending(self) -> int:
        """Points buffered but not yet written."""
        return len(self._buffer)

    def flush(self, force: bool = False) -> bool:
        """Write the buffered points in one transaction; True when they were written (or there were none).

        Without `force`, passengers alone (see add_points) wait until they are old enough.
        On failure the points stay buffered for the next attempt and the error is
        logged and kept in `last_error`; this never raises.
        """
        with self._flush_lock:
            with self._buffer_lock:
                batch = list(self._buffer)
                passengers_only = not self._has_own_points and self._passengers_since is not None
                young = passengers_only and self._clock() - self._passengers_since < self.passenger_max_wait_s
            if not batch or (young and not force):
                return True
            try:
                self._write_points(batch)
            except Exception as err:  # any DB or driver error: keep the points, retry later
                self.consecutive_failures += 1
                self.last_error = err
                log.warning("writing %d metric points failed (%d in a row, %d kept for retry): %s: %s",
                            len(batch), self.consecutive_failures, len(self._buffer), type(err).__name__, err)
                return False
            with self._buffer_lock:
                # Only flushes remove points, and hooks only append, so the batch is still the prefix.
                del self._buffer[:len(batch)]
                if not self._buffer:
                    self._has_own_points, self._passengers_since = False, None
            if self.consecutive_failures:
                log.info("metric points written again after %d failed attempts", self.consecutive_failures)
            self.consecutive_failures = 0
            self.flushes += 1
            self.points_written += len(batch)
            return True

    def flush_durably(self) -> None:
        """Flush, retrying with backoff; raise MetricWriteError once `max_failures` attempts in a row failed."""
        delay = self.retry_delay_s
        while not self.flush(force=True):
            self._raise_if_given_up()
            time.sleep(delay)
            delay = min(delay * 2, self.max_retry_delay_s)

    def close(self) -> None:
        """Write whatever is left; raises MetricWriteError when that is impossible."""
        self.flush_durably()

    # -------------------------------------------------------------- helpers ---

    def _append(self, points: list[PendingPoint]) -> None:
        # NaN and infinite values (a diverged training) are kept: the store writes them as NULL.
        with self._buffer_lock:
            self._buffer.extend(points)
            self._has_own_points = True

    def _raise_if_given_up(self) -> None:
        if self.consecutive_failures >= self.max_failures:
            raise MetricWriteError(
                f"{len(self._buffer)} metric points could not be written after {self.consecutive_failures} "
                f"attempts; last error: {type(self.last_error).__name__}: {self.last_error}"
            ) from self.last_error
