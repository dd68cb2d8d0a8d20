"""Training a claimed run: resume point, data, the trainer with live metrics, the final status.

Runs in the training process that worker.supervisor starts for each run (or in the worker itself
when worker.tasks.TRAIN_IN_CHILD_PROCESS is off). Whatever happens, a run that reaches here does
not stay `running`: it ends as succeeded (also after early stopping), cancelled (metrics and the
last checkpoint kept) or failed (with the exception's type, message and a traceback excerpt).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from app.core.config import Settings, get_settings
from app.models import Run, RunEventKind, RunStatus
from app.services.datasets import load_run_splits
from ml.config import TrainConfig, from_dict
from ml.trainer import Callback, TrainResult, TrainStart, load_checkpoint, resolve_device, train
from worker.heartbeat import RunHeartbeat, heartbeat_interval_s
from worker.metric_writer import MetricWriter
from worker.store import RunStore, relative_to_artifacts
from worker.system_metrics import EnvironmentRecorder, SystemSampler

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
TRACEBACK_EXCERPT_CHARS = 4000
# Test-only: a training step that never returns, at this step (see hang_for_tests).
HANG_AT_STEP_VARIABLE = "TRAINBOARD_TEST_HANG_AT_STEP"


def train_claimed_run(run: Run, store: RunStore) -> str:
    """Train a claimed run in this process and record how it ended, whatever happens."""
    try:
        return execute_run(run, store, get_settings())
    except BaseException as err:  # noqa: BLE001 - also KeyboardInterrupt/SystemExit: record, then re-raise
        fail_run(store, err)
        if not isinstance(err, Exception):
            raise
        return RunStatus.failed.value


def execute_run(run: Run, store: RunStore, settings: Settings) -> str:
    """Everything after the claim: resume point, data, training, and the run's final status."""
    checkpoint = checkpoint_path(settings, run.id)
    resume = resume_point(run, store, checkpoint)
    writer = MetricWriter(store.write_points, time_offset=resume.time_offset if resume else 0.0)
    # The heartbeat beats while the data loads too (decoding an image folder can take minutes),
    # and on the way out flushes what the writer holds, also when training raised.
    with RunHeartbeat(store, writer, interval_s=heartbeat_interval_s()) as heartbeat:
        config = from_dict(TrainConfig, run.hyperparameters)
        spec, splits = load_run_splits(run, settings=settings)
        recorder = RunRecorder(store, settings.ARTIFACTS_DIR)
        device = resolve_device("auto")
        # System metrics (system/…) go through the same writer; the sampler stops before it closes.
        with SystemSampler(writer, device, config.batch_size) as system:
            result = train(run.model, config, splits, device=device,
                           callbacks=[writer, recorder, system, EnvironmentRecorder(store, device),
                                      *hang_for_tests()],
                           should_stop=heartbeat.should_stop, checkpoint_path=checkpoint,
                           resume_from=checkpoint if resume else None, augment=spec.augment,
                           allow_download=spec.download)
        writer.close()  # the last points, durably, before the run is marked finished
    return finish(run, result, heartbeat, store, settings)


# ----------------------------------------------------------------- inputs ---

def checkpoint_path(settings: Settings, run_id: int) -> Path:
    return settings.ARTIFACTS_DIR / str(run_id) / CHECKPOINT_NAME


@dataclass(frozen=True)
class ResumePoint:
    step: int  # the checkpoint's optimizer step
    time_offset: float  # seconds of training before it


def resume_point(run: Run, store: RunStore, checkpoint: Path) -> ResumePoint | None:
    """For a redelivered run: where its checkpoint left off (None: start from step 0).

    Points written after the checkpoint's step are dropped: training repeats those steps.
    """
    if run.resumed_count == 0:
        return None
    if not checkpoint.is_file():
        store.truncate_metrics(after_step=-1)
        store.add_event(RunEventKind.info, "no checkpoint was saved before the worker was lost; restarting at step 0")
        return None
    state = load_checkpoint(checkpoint)
    history = state.get("history") or []
    point = ResumePoint(step=int(state["step"]), time_offset=float(history[-1].get("time", 0.0)) if history else 0.0)
    store.truncate_metrics(after_step=point.step)
    store.add_event(RunEventKind.resumed, f"resumed from checkpoint at step {point.step}")
    return point


# ------------------------------------------------------------- callbacks ---

class RunRecorder(Callback):
    """Run history entries from the training thread: what trains where, and each checkpoint.

    Both are best effort: a history entry that cannot be written must not end the training.
    """

    def __init__(self, store: RunStore, artifacts_dir: Path) -> None:
        self.store = store
        self.artifacts_dir = artifacts_dir

    def on_train_start(self, info: TrainStart) -> None:
        message = (f"training on {info.device}: {info.parameters:,} parameters ({info.trainable_parameters:,} "
                   f"trainable), {info.num_train}/{info.num_val}/{info.num_test} train/val/test images, "
                   f"{info.total_steps} steps")
        self._best_effort(self.store.add_event, RunEventKind.info, message)

    def on_checkpoint(self, path: Path, step: int) -> None:
        # If this fails, finish_run still records the final checkpoint's path.
        self._best_effort(self.store.record_checkpoint, relative_to_artifacts(path, self.artifacts_dir), step)

    @staticmethod
    def _best_effort(write: Callable[..., Any], *args: Any) -> None:
        try:
            write(*args)
        except Exception as err:
            log.warning("%s failed: %s: %s", getattr(write, "__name__", "write"), type(err).__name__, err)


class HangAtStep(Callback):
    """Test-only: from step `step` on, the training thread blocks for ever, deaf to cancels and SIGTERM.

    Step 0 hangs at the training's start, before the trainer first checks for a stop, so a
    test can rely on the hang however long the data took to load.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_start(self, info: Any) -> None:
        if self.step == 0:
            self._hang(0)

    def on_step(self, report: Any) -> None:
        if report.step >= self.step:
            self._hang(report.step)

    @staticmethod
    def _hang(step: int) -> None:
        log.warning("%s: hanging at step %s", HANG_AT_STEP_VARIABLE, step)
        while True:
            time.sleep(3600)


def hang_for_tests() -> list[Callback]:
    """[HangAtStep] when the test-only environment variable asks for it, else nothing."""
    step = os.environ.get(HANG_AT_STEP_VARIABLE)
    return [HangAtStep(int(step))] if step else []


# ------------------------------------------------------------- finishing ---

def finish(run: Run, result: TrainResult, heartbeat: RunHeartbeat, store: RunStore, settings: Settings) -> str:
    """Map the trainer's result to the run's final status and write it."""
    final = result.final
    best = result.best.get("metrics", {}) if result.best else {}
    stored_checkpoint = relative_to_artifacts(result.checkpoint, settings.ARTIFACTS_DIR) if result.checkpoint else None
    if result.status == "cancelled" and not heartbeat.cancel_requested:
        # Not the user: the worker is shutting down. Say so instead of pretending it was cancelled.
        error = (f"interrupted at step {result.steps}: the worker shut down. The checkpoint of the last "
                 f"evaluation is kept{f' ({stored_checkpoint})' if stored_checkpoint else ''}.")
        store.finish(RunStatus.failed, final_metrics=final, best_metrics=best, error=error,
                     checkpoint_path=stored_checkpoint)
        return RunStatus.failed.value
    if result.status == "early_stopped":
        store.add_event(RunEventKind.info, early_stop_message(run, result))
    status = RunStatus.cancelled if result.status == "cancelled" else RunStatus.succeeded
    store.finish(status, final_metrics=final, best_metrics=best, checkpoint_path=stored_checkpoint)
    return status.value


def early_stop_message(run: Run, result: TrainResult) -> str:
    last_epoch = result.history[-1]["epoch"] if result.history else 0.0
    count = run.hyperparameters.get("early_stop_count")
    return (f"early stopped at epoch {last_epoch:g} (step {result.steps}): the last {count} validation "
            f"losses did not decrease")


def fail_run(store: RunStore, err: BaseException) -> None:
    """Record `err` as the run's failure; logs (never raises) when even that is impossible."""
    log.error("run %s failed", store.run_id, exc_info=err)
    try:
        store.finish(RunStatus.failed, error=error_text(err))
    except Exception:
        log.exception("could not mark run %s failed; the watchdog will once its heartbeat is stale", store.run_id)


def error_text(err: BaseException) -> str:
    """'Type: message' on the first line (the history shows it), then the end of the traceback."""
    headline = f"{type(err).__name__}: {err}".strip()
    trace = "".join(traceback.format_exception(err))
    if len(trace) > TRACEBACK_EXCERPT_CHARS:
        trace = "…\n" + trace[-TRACEBACK_EXCERPT_CHARS:]
    return f"{headline}\n\n{trace}"
