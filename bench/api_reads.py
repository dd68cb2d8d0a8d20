"""Read latency of the REST API on a real SQLite file (or DATABASE_URL when set).

1. `GET /api/runs` with 10,000 runs in the database (target p95 < 100 ms),
   against the same requests with 100 runs (the baseline, same process).
2. `GET /api/runs/{id}/metrics` on a run with 100,000 points while 4 runs write
   batches as workers do (target p95 < 100 ms), against the same reads with no
   writers (the baseline).

    .venv/bin/python bench/api_reads.py [--database-url postgresql+psycopg://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import insert  # noqa: E402
from sqlmodel import Session  # noqa: E402

from app.core.config import Settings  # noqa: E402
from app.core.db import create_db_engine, migrate, utcnow  # noqa: E402
from app.main import create_app  # noqa: E402
from app.models import MetricPoint, Run, RunStatus  # noqa: E402
from app.services import lifecycle  # noqa: E402

LIST_URLS = ["/api/runs", "/api/runs?status=succeeded&sort=best_val_acc", "/api/runs?model=net1&sort=test_acc&order=asc",
             "/api/runs?q=run-99&sort=name", "/api/runs?tag=sweep:abc&sort=duration", "/api/runs?offset=9000&limit=100"]


def timings_ms(client: TestClient, urls: list[str], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        for url in urls:
            began = time.perf_counter()
            response = client.get(url)
            out.append((time.perf_counter() - began) * 1000)
            response.raise_for_status()
    return out


def summary(label: str, ms: list[float]) -> float:
    p50, p95 = statistics.median(ms), float(np.percentile(ms, 95))
    print(f"  {label:<34} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   (n={len(ms)})")
    return p95


def insert_runs(engine: Any, count: int, offset: int = 0) -> None:
    now, statuses = utcnow(), list(RunStatus)
    rows = [{
        "name": f"run-{i}", "model": ("task1", "net1", "net2", "resnet18")[i % 4], "status": statuses[i % 5],
        "dataset": {"kind": "cifar10"}, "hyperparameters": {"lr": 0.05, "batch_size": 64, "epochs": 10},
        "parameters": 390410, "created_at": now - timedelta(seconds=i), "cancel_requested": False, "epoch": 10.0,
        "step": 7000, "best_metrics": {"val/acc": (i % 97) / 100}, "final_metrics": {"test/acc": (i % 89) / 100},
        "best_val_acc": (i % 97) / 100, "test_acc": (i % 89) / 100, "duration_s": float(i % 3600),
        "tags": ["sweep:abc"] if i % 10 == 0 else [], "notes": "", "resumed_count": 0,
    } for i in range(offset, offset + count)]
    with Session(engine) as session:
        session.execute(insert(Run.__table__), rows)
        session.commit()


def new_run(engine: Any, status: RunStatus) -> int:
    with Session(engine) as session:
        run = Run(name="bench", model="task1", dataset={"kind": "cifar10"}, hyperparameters={}, parameters=0,
                  status=status, created_at=utcnow())
        session.add(run)
        session.commit()
        return run.id


def insert_points(engine: Any, run_id: int) -> None:
    """100,000 points: a 94,000-step train/loss series plus three 2,000-point series."""
    steps = np.arange(94_000)
    values = np.exp(-steps / 20_000) + 0.1 * np.sin(steps)
    points = [{"run_id": run_id, "step": int(s), "epoch": s / 700, "split": "train", "name": "train/loss",
               "value": float(v), "time": s * 0.05} for s, v in zip(steps, values)]
    for name in ("val/loss", "val/acc", "train/lr"):
        points += [{"run_id": run_id, "step": i * 47, "epoch": i / 15, "split": name.split("/")[0], "name": name,
                    "value": 1.0 / (i + 1), "time": i * 2.0} for i in range(2000)]
    with Session(engine) as session:
        session.execute(insert(MetricPoint.__table__), points)
        session.commit()


def writers(engine: Any, run_ids: list[int], stop: threading.Event, errors: list[BaseException]) -> list[threading.Thread]:
    def write(run_id: int) -> None:  # a worker's MetricWriter: a batch of points every 0.2 s
        try:
            with Session(engine) as session:
                step = 0
                while not stop.is_set():
                    lifecycle.add_metric_points(session=session, run_id=run_id, points=[
                        {"step": step + i, "epoch": 0.0, "name": "train/step_loss", "value": 1.0, "time": 0.0}
                        for i in range(50)])
                    lifecycle.update_progress(session=session, run_id=run_id, epoch=0.0, step=step)
                    step += 50
                    time.sleep(0.2)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)
    return [threading.Thread(target=write, args=(run_id,)) for run_id in run_ids]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TRAINBOARD_ENV_FILE", "")
        settings = Settings(_env_file=None, DATA_DIR=Path(tmp), **({"DATABASE_URL": args.database_url}
                                                                      if args.database_url else {}))
        engine = create_db_engine(settings.DATABASE_URL)
        migrate(engine)
        print(f"database: {engine.url.get_backend_name()}")
        with TestClient(create_app(settings)) as client:
            print("GET /api/runs")
            insert_runs(engine, 100)
            timings_ms(client, LIST_URLS, 1)
            base = summary("100 runs (baseline)", timings_ms(client, LIST_URLS, args.repeats))
            insert_runs(engine, 9_900, offset=100)
            timings_ms(client, LIST_URLS, 1)
            big = summary("10,000 runs", timings_ms(client, LIST_URLS, args.repeats))
            print(f"  ratio 10,000/100 runs p95: {big / base:.2f}   target p95 < 100 ms: {'ok' if big < 100 else 'MISSED'}")

            print("GET /api/runs/{id}/metrics, 100,000 points")
            run_id = new_run(engine, RunStatus.succeeded)
            insert_points(engine, run_id)
            url = f"/api/runs/{run_id}/metrics"
            urls = [url, f"{url}?names=train/loss", f"{url}?split=val"]
            # The first read fills this web process's series cache from the database.
            print(f"  first (cold) read: {timings_ms(client, [url], 1)[0]:.1f} ms")
            timings_ms(client, urls, 1)
            idle = summary("no writers (baseline)", timings_ms(client, urls, args.repeats))
            stop, errors = threading.Event(), []
            threads = writers(engine, [new_run(engine, RunStatus.running) for _ in range(4)], stop, errors)
            for thread in threads:
                thread.start()
            try:
                loaded = summary("4 runs writing", timings_ms(client, urls, args.repeats))
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
            if errors:
                print(f"  writer errors: {errors!r}")
            print(f"  ratio loaded/idle p95: {loaded / idle:.2f}   target p95 < 100 ms: "
                  f"{'ok' if loaded < 100 else 'MISSED'}")
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
