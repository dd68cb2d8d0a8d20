"""Is ix_metric_point_run_split_name_step worth keeping? Inserts and chart reads with and without it, in one run.

Two fresh SQLite files (WAL, as the embedded mode uses them), one migrated to
0006_worker (the baseline: both metric_point indexes) and one to head (0007
drops the (run_id, split, name, step) index). Each is seeded with `--runs`
finished runs of `--points` points, so the indexes have the size of a used
dashboard. Then, alternating between the two databases for `--rounds` rounds:

- insert: a new run's `--insert-points` points through
  lifecycle.add_metric_points in batches of `--batch` (what the worker's
  MetricWriter flushes), points/s;
- chart read: metrics.read_metrics of a seeded run with a cold cache (what the
  charts and /api/runs/{id}/metrics do on a first view), ms;
- live read: metrics.read_new_points after the run's middle id, ms.

It prints each database's query plans, so a read that uses the dropped index shows.

    .venv/bin/python bench/metric_index.py
    .venv/bin/python bench/metric_index.py --runs 20 --points 50000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, func, select, text  # noqa: E402
from sqlmodel import Session  # noqa: E402

from app.core.db import create_db_engine, migrate, utcnow  # noqa: E402
from app.models import MetricPoint, Run, RunStatus  # noqa: E402
from app.services.lifecycle import add_metric_points  # noqa: E402
from app.services.metrics import MetricsCache, read_metrics, read_new_points  # noqa: E402

NAMES = ("train/loss", "train/lr", "train/images_per_s", "val/loss", "val/acc")
BASELINE, CANDIDATE = "0006_worker", "head"


def new_run(engine: Engine) -> int:
    with Session(engine) as session:
        run = Run(name="bench", model="task1", status=RunStatus.running, created_at=utcnow(), started_at=utcnow())
        session.add(run)
        session.commit()
        return int(run.id)


def points(count: int, start: int = 0) -> list[dict[str, object]]:
    return [{"step": (start + i) // len(NAMES), "epoch": (start + i) / 3500, "name": NAMES[(start + i) % len(NAMES)],
             "value": 1.0 / (1 + start + i), "time": (start + i) * 0.01} for i in range(count)]


def insert_points(engine: Engine, run_id: int, count: int, batch: int) -> None:
    with Session(engine) as session:
        for start in range(0, count, batch):
            add_metric_points(session=session, run_id=run_id, points=points(min(batch, count - start), start))


def seeded_database(folder: Path, revision: str, runs: int, per_run: int) -> tuple[Engine, list[int]]:
    engine = create_db_engine(f"sqlite:///{folder / revision}.db")
    migrate(engine, revision)
    run_ids = [new_run(engine) for _ in range(runs)]
    for run_id in run_ids:
        insert_points(engine, run_id, per_run, batch=5000)
    return engine, run_ids


def time_insert(engine: Engine, count: int, batch: int) -> float:
    run_id = new_run(engine)
    started = time.perf_counter()
    insert_points(engine, run_id, count, batch)
    return count / (time.perf_counter() - started)


def time_call(engine: Engine, read) -> float:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        started = time.perf_counter()
        read(session)
        return (time.perf_counter() - started) * 1000


def chart_read(run_id: int):  # type: ignore[no-untyped-def]
    return lambda session: read_metrics(session=session, run_id=run_id, cache=MetricsCache())


def live_read(engine: Engine, run_id: int):  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        middle = session.scalar(select(func.min(MetricPoint.id) + func.count() / 2).where(MetricPoint.run_id == run_id))
    return lambda session: read_new_points(session=session, run_id=run_id, after_id=int(middle), limit=5000)


def query_plans(engine: Engine, run_id: int) -> list[str]:
    """SQLite's plan of each metric_point read the app makes."""
    reads = [
        f"SELECT id, split, name, step, epoch, time, value FROM metric_point WHERE run_id = {run_id} AND id > 0 ORDER BY id",
        f"SELECT max(id) FROM metric_point WHERE run_id = {run_id}",
        f"DELETE FROM metric_point WHERE run_id = {run_id} AND step > 10",
    ]
    with engine.connect() as connection:
        return [" | ".join(row[-1] for row in connection.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
                for sql in reads]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="seeded runs per database")
    parser.add_argument("--points", type=int, default=30_000, help="points per seeded run")
    parser.add_argument("--insert-points", type=int, default=60_000, help="points inserted per round")
    parser.add_argument("--batch", type=int, default=300, help="points per transaction")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-metric-index-") as tmp:
        databases = {revision: seeded_database(Path(tmp), revision, args.runs, args.points)
                     for revision in (BASELINE, CANDIDATE)}
        inserts: dict[str, list[float]] = {revision: [] for revision in databases}
        charts: dict[str, list[float]] = {revision: [] for revision in databases}
        lives: dict[str, list[float]] = {revision: [] for revision in databases}
        for round_ in range(args.rounds):
            order = (BASELINE, CANDIDATE) if round_ % 2 == 0 else (CANDIDATE, BASELINE)
            for revision in order:
                engine, run_ids = databases[revision]
                run_id = run_ids[round_ % len(run_ids)]
                inserts[revision].append(time_insert(engine, args.insert_points, args.batch))
                charts[revision].append(time_call(engine, chart_read(run_id)))
                lives[revision].append(time_call(engine, live_read(engine, run_id)))

        print(f"database: SQLite (WAL), {args.runs} runs × {args.points:,} points seeded; "
              f"{args.insert_points:,} points inserted per round in batches of {args.batch}; "
              f"medians of {args.rounds} rounds")
        for revision, label in ((BASELINE, "with the index (0006)"), (CANDIDATE, "without it (0007)")):
            engine, run_ids = databases[revision]
            print(f"{label:22}: insert {statistics.median(inserts[revision]):>9,.0f} points/s, "
                  f"chart read {statistics.median(charts[revision]):7.1f} ms, "
                  f"live read {statistics.median(lives[revision]):6.2f} ms")
            for plan in query_plans(engine, run_ids[0]):
                print(f"{'':24}plan: {plan}")
        base, cand = BASELINE, CANDIDATE
        print(f"ratio (without / with): insert {statistics.median(inserts[cand]) / statistics.median(inserts[base]):.2f}x "
              f"faster, chart read {statistics.median(charts[cand]) / statistics.median(charts[base]):.2f}x the time, "
              f"live read {statistics.median(lives[cand]) / statistics.median(lives[base]):.2f}x the time")
        for engine, _ in databases.values():
            engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
