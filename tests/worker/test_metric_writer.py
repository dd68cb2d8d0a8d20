"""MetricWriter against an in-memory sink: batching, flush on eval, retries, step overhead."""

from __future__ import annotations

import threading
import time
from typing import Sequence

import pytest

from ml.trainer import EvalReport, StepReport, TrainStart
from worker.metric_writer import MetricWriteError, MetricWriter, PendingPoint

EVAL_METRICS = {"train/loss": 2.0, "train/acc": 0.1, "val/loss": 2.1, "val/acc": 0.12,
                "test/loss": 2.2, "test/acc": 0.11}


class RecordingSink:
    """Records every batch; fails the next `fail_next` writes."""

    def __init__(self, fail_next: int = 0) -> None:
        self.batches: list[list[PendingPoint]] = []
        self.fail_next = fail_next
        self.failed = 0
        self.lock = threading.Lock()

    def __call__(self, points: Sequence[PendingPoint]) -> None:
        with self.lock:
            if self.fail_next:
                self.fail_next -= 1
                self.failed += 1
                raise ConnectionError("database unavailable")
            self.batches.append(list(points))

    @property
    def points(self) -> list[PendingPoint]:
        return [p for batch in self.batches for p in batch]


def step_report(step: int) -> StepReport:
    return StepReport(step=step, epoch=step / 100, loss=1.0 / step, lr=0.05, images_per_s=5000.0, total_steps=1000)


def eval_report(step: int) -> EvalReport:
    return EvalReport(step=step, epoch=step / 100, metrics=dict(EVAL_METRICS), is_best=False)


def start(writer: MetricWriter) -> None:
    writer.on_train_start(TrainStart(total_steps=1000, steps_per_epoch=100, start_step=0, parameters=10,
                                     trainable_parameters=10, device="cpu", num_train=1, num_val=1, num_test=1))


def test_metric_writer_batches_points_into_few_writes() -> None:
    sink = RecordingSink()
    writer = MetricWriter(sink)
    start(writer)
    for step in range(1, 301):
        writer.on_step(step_report(step))
        if step % 100 == 0:
            writer.on_eval(eval_report(step))
    writer.close()

    assert len(sink.points) == 300 * 3 + 3 * len(EVAL_METRICS)
    assert len(sink.batches) == 3  # one transaction per evaluation, none per point
    assert writer.flushes == 3 and writer.pending == 0


def test_metric_writer_names_and_times_points() -> None:
    sink = RecordingSink()
    writer = MetricWriter(sink, time_offset=100.0)
    start(writer)
    writer.on_step(step_report(5))
    writer.on_eval(eval_report(5))

    names = [p.name for p in sink.points]
    assert names[:3] == ["train/step_loss", "train/lr", "train/images_per_s"]
    assert set(names[3:]) == set(EVAL_METRICS)
    assert all(p.step == 5 and p.epoch == 0.05 for p in sink.points)
    assert all(100.0 <= p.time < 110.0 for p in sink.points)  # seconds since the run started, resume included
    assert writer.progress.step == 5 and writer.progress.total_steps == 1000


def test_metric_writer_flushes_on_eval_before_returning() -> None:
    sink = RecordingSink()
    writer = MetricWriter(sink)
    start(writer)
    writer.on_step(step_report(1))
    assert sink.points == []  # steps only buffer

    writer.on_eval(eval_report(1))
    assert {p.name for p in sink.points} >= set(EVAL_METRICS)
    assert writer.pending == 0


def test_metric_writer_retry_after_failed_flush_loses_nothing() -> None:
    sink = RecordingSink(fail_next=2)
    writer = MetricWriter(sink, retry_delay_s=0.01)
    start(writer)
    writer.on_step(step_report(1))
    assert writer.flush() is False  # the periodic flush fails: the points stay buffered
    assert writer.pending == 3 and writer.consecutive_failures == 1

    writer.on_step(step_report(2))
    writer.on_eval(eval_report(2))  # one more failure, then the retry goes through

    assert sink.failed == 2
    assert [p.step for p in sink.points] == [1, 1, 1, 2, 2, 2] + [2] * len(EVAL_METRICS)
    assert len(sink.batches) == 1 and writer.pending == 0 and writer.consecutive_failures == 0


def test_metric_writer_surfaces_a_lasting_failure() -> None:
    sink = RecordingSink(fail_next=10**6)
    writer = MetricWriter(sink, max_failures=3, retry_delay_s=0.001)
    start(writer)
    writer.on_step(step_report(1))

    with pytest.raises(MetricWriteError, match="could not be written after 3 attempts"):
        writer.on_eval(eval_report(1))
    assert writer.pending == 3 + len(EVAL_METRICS)  # still buffered, not dropped
    with pytest.raises(MetricWriteError):
        writer.on_step(step_report(2))  # training does not go on silently without its metrics


def test_metric_writer_concurrent_flushes_write_each_point_once() -> None:
    sink = RecordingSink()
    writer = MetricWriter(sink)
    start(writer)
    stop = threading.Event()

    def flush_forever() -> None:
        while not stop.is_set():
            writer.flush()

    flusher = threading.Thread(target=flush_forever)
    flusher.start()
    for step in range(1, 2001):
        writer.on_step(step_report(step))
    stop.set()
    flusher.join()
    writer.close()

    assert [p.step for p in sink.points] == [s for s in range(1, 2001) for _ in range(3)]


def test_metric_writer_on_step_costs_under_1ms() -> None:
    writer = MetricWriter(RecordingSink())
    start(writer)
    reports = [step_report(step) for step in range(1, 5001)]
    began = time.perf_counter()
    for report in reports:
        writer.on_step(report)
    per_step_s = (time.perf_counter() - began) / len(reports)
    assert per_step_s < 1e-3, f"on_step took {per_step_s * 1e6:.0f} µs"
