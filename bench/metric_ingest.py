"""Metric ingestion: the worker's MetricWriter against a naive commit-per-point writer, in one run.

Both write into a fresh, migrated SQLite database (WAL, as the embedded mode
uses it) through app.services.lifecycle.add_metric_points:

- writer: a simulated training calls MetricWriter.on_step (3 points) every step
  and on_eval (6 points, flushed synchronously) every `--eval-every` steps,
  while the run's RunHeartbeat thread flushes every 2 s, as in the worker;
  throughput counts until the last point is committed;
- naive: one session and one transaction per point.

It also times on_step itself while the heartbeat thread flushes next to it,
which is what the writer adds to each logged training step (target < 1 ms).

    .venv/bin/python bench/metric_ingest.py
    .venv/bin/python bench/metric_ingest.py --steps 200000 --database-url postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, delete  # noqa: E402
from sqlmodel import Session  # noqa: E402

from app.core.db import create_db_engine, migrate, utcnow  # noqa: E402
from app.models import MetricPoint, Run, RunStatus  # noqa: E402
from app.services.lifecycle import add_metric_points  # noqa: E402
from ml.trainer import EvalReport, StepReport, TrainStart  # noqa: E402
from worker.heartbeat import RunHeartbeat  # noqa: E402
from worker.metric_writer import MetricWriter  # noqa: E402
from worker.store import RunStore  # noqa: E402

EVAL_METRICS = {"train/loss": 1.2, "train/acc": 0.6, "val/loss": 1.3, "val/acc": 0.55,
                "test/loss": 1.3, "test/acc": 0.54}
TARGET_POINTS_PER_S = 20_000
TARGET_STEP_OVERHEAD_MS = 1.0


@dataclass
class Ingest:
    points: int
    seconds: float
    transactions: int

    @property
    def per_second(self) -> float:
        return self.points / self.seconds


def running_run(engine: Engine) -> int:
    with Session(engine) as session:
        run = Run(name="bench", model="task1", status=RunStatus.running, created_at=utcnow(), started_at=utcnow())
        session.add(run)
        session.commit()
        return run.id


def step_report(step: int) -> StepReport:
    return StepReport(step=step, epoch=step / 700, loss=1.0 + 1 / step, lr=0.05, images_per_s=9000.0,
                      total_steps=10**7)


def started_writer(store: RunStore) -> MetricWriter:
    writer = MetricWriter(store.write_points)
    writer.on_train_start(TrainStart(total_steps=10**7, steps_per_epoch=700, start_step=0, parameters=1,
                                     trainable_parameters=1, device="cpu", num_train=1, num_val=1, num_test=1))
    return writer


def bench_writer(engine: Engine, steps: int, eval_every: int) -> Ingest:
    store = RunStore(running_run(engine), engine)
    writer = started_writer(store)
    reports = [step_report(step) for step in range(1, steps + 1)]
    began = time.perf_counter()
    with RunHeartbeat(store, writer):
        for report in reports:
            writer.on_step(report)
            if report.step % eval_every == 0:
                writer.on_eval(EvalReport(step=report.step, epoch=report.epoch, metrics=EVAL_METRICS, is_best=False))
        writer.close()
    return Ingest(writer.points_written, time.perf_counter() - began, writer.flushes)


def bench_naive(engine: Engine, points: int) -> Ingest:
    run_id = running_run(engine)
    rows = [{"name": "train/step_loss", "step": i, "epoch": i / 700, "time": i * 0.01, "value": 1.0}
            for i in range(points)]
    began = time.perf_counter()
    for row in rows:
        with Session(engine) as session:
            add_metric_points(session=session, run_id=run_id, points=[row])
    return Ingest(points, time.perf_counter() - began, points)


def bench_step_overhead(engine: Engine, steps: int) -> list[float]:
    """Seconds per on_step call, with the heartbeat thread flushing (every 0.2 s here, for contention)."""
    store = RunStore(running_run(engine), engine)
    writer = started_writer(store)
    durations = []
    with RunHeartbeat(store, writer, interval_s=0.2):
        for step in range(1, steps + 1):
            report = step_report(step)
            began = time.perf_counter()
            writer.on_step(report)
            durations.append(time.perf_counter() - began)
            if step % 50 == 0:
                time.sleep(0.001)  # a training step's worth of time between reports, for the flusher to run
    writer.close()
    return durations


def clear_points(engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(delete(MetricPoint.__table__))
        session.commit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000, help="simulated steps for the writer (3 points each)")
    parser.add_argument("--eval-every", type=int, default=1000, help="steps between evaluations")
    parser.add_argument("--naive-points", type=int, default=3000, help="points for the commit-per-point writer")
    parser.add_argument("--overhead-steps", type=int, default=20_000)
    parser.add_argument("--database-url", help="default: a new SQLite file in a temporary folder")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = create_db_engine(url)
        migrate(engine)
        writer = bench_writer(engine, args.steps, args.eval_every)
        naive = bench_naive(engine, args.naive_points)
        durations = bench_step_overhead(engine, args.overhead_steps)
        if args.database_url:
            clear_points(engine)
        engine.dispose()

    mean_ms = statistics.fmean(durations) * 1e3
    p99_ms = statistics.quantiles(durations, n=100)[98] * 1e3
    print(f"database: {engine.dialect.name}")
    print(f"MetricWriter : {writer.points:>9,} points in {writer.seconds:6.2f} s = {writer.per_second:>9,.0f} points/s "
          f"({writer.transactions} transactions, {writer.points / writer.transactions:,.0f} points each)")
    print(f"naive        : {naive.points:>9,} points in {naive.seconds:6.2f} s = {naive.per_second:>9,.0f} points/s "
          f"(one transaction per point)")
    print(f"ratio        : {writer.per_second / naive.per_second:,.1f}x")
    print(f"on_step      : mean {mean_ms * 1e3:.1f} µs, p99 {p99_ms * 1e3:.1f} µs, max {max(durations) * 1e6:.0f} µs "
          f"per call over {len(durations):,} calls, with the heartbeat flushing alongside")
    ok = writer.per_second >= TARGET_POINTS_PER_S and mean_ms < TARGET_STEP_OVERHEAD_MS
    print(f"targets      : >= {TARGET_POINTS_PER_S:,} points/s and < {TARGET_STEP_OVERHEAD_MS} ms per step: "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
