"""Server-side render time of the pages, in process (TestClient against the ASGI app).

1. The runs list with 10,000 runs in the database (target p95 < 200 ms), against
   a baseline measured in the same run: the bare JSON `/api/runs` of the same page
   (same filters, sort and page size). The ratio page/JSON is the cost of the HTML.
2. The comparison page of 10 runs with a few thousand metric points each (target
   p95 < 1 s), against the JSON `/api/compare` of the same runs plus their
   `/api/runs/{id}/metrics` (what a client-side page would have to fetch).

    .venv/bin/python bench/pages_render.py                    # SQLite in a temporary folder
    .venv/bin/python bench/pages_render.py --runs 10000 --repeats 20
    DATABASE_URL=postgresql+psycopg://… .venv/bin/python bench/pages_render.py   # an EMPTY database
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LIST_TARGET_MS = 200.0
COMPARE_TARGET_MS = 1000.0
MODELS = ("task1", "net1", "net2", "resnet18")
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def timed(get: Callable[[], Any], repeats: int) -> list[float]:
    """Milliseconds per call, after one warm-up call (caches, first template compile)."""
    get()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        get()
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def fetch(client: Any, url: str) -> Callable[[], Any]:
    def get() -> Any:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code, response.text[:300])
        return response
    return get


def fetch_all(client: Any, urls: list[str]) -> Callable[[], Any]:
    getters = [fetch(client, url) for url in urls]
    return lambda: [get() for get in getters]


def insert_runs(engine: Any, count: int) -> None:
    """`count` finished-looking runs, inserted in bulk (as tests/app/test_performance.py does)."""
    from sqlalchemy import insert
    from sqlmodel import Session

    from app.core.db import utcnow
    from app.models import Run

    now = utcnow()
    rows = [{
        "name": f"run-{i}", "model": MODELS[i % 4], "status": STATUSES[i % 5],
        "dataset": {"kind": "cifar10"}, "hyperparameters": {"lr": 0.05 + (i % 7) / 100, "batch_size": 64,
                                                            "epochs": 10, "optimizer": "sgd"},
        "parameters": 390410, "created_at": now - timedelta(seconds=i), "cancel_requested": False,
        "epoch": 10.0, "step": 7000, "total_steps": 7000, "best_metrics": {"val/acc": (i % 97) / 100},
        "final_metrics": {"test/acc": (i % 89) / 100}, "best_val_acc": (i % 97) / 100, "test_acc": (i % 89) / 100,
        "duration_s": float(i % 3600), "tags": ["sweep:abc"] if i % 10 == 0 else [], "notes": "", "resumed_count": 0,
    } for i in range(count)]
    with Session(engine) as session:
        for start in range(0, count, 2000):
            session.execute(insert(Run.__table__), rows[start:start + 2000])
        session.commit()


def insert_compared_runs(engine: Any, runs: int, steps: int) -> list[int]:
    """`runs` succeeded runs with `steps` train points (loss, lr, acc) and evaluations every 50 steps."""
    from sqlmodel import Session

    from app.models import RunCreate
    from app.services import lifecycle
    from app.services import runs as run_service

    ids = []
    with Session(engine) as session:
        for r in range(runs):
            [run] = run_service.create_runs(session=session, runs_in=[RunCreate(
                model="task1", name=f"compared-{r}", hyperparameters={"lr": 0.01 * (r + 1)})])
            lifecycle.claim_run(session=session, run_id=run.id, hostname="bench", max_redeliveries=3)
            points = []
            for step in range(steps):
                epoch, t = step / 700, step * 0.02
                points += [{"step": step, "epoch": epoch, "name": name, "value": value, "time": t} for name, value in
                           (("train/loss", 2 / (1 + step / 100)), ("train/lr", 0.1), ("train/acc", step / steps))]
                if step % 50 == 49:
                    points += [{"step": step, "epoch": epoch, "name": name, "value": value, "time": t}
                               for name, value in (("val/loss", 1 / (1 + step / 90)), ("val/acc", step / steps))]
            lifecycle.add_metric_points(session=session, run_id=run.id, points=points)
            lifecycle.finish_run(session=session, run_id=run.id, status="succeeded",
                                 final_metrics={"train/loss": 0.4, "val/loss": 0.6, "train/acc": 0.9, "val/acc": 0.7,
                                                "test/acc": 0.69},
                                 best_metrics={"val/acc": 0.72})
            ids.append(run.id)
    return ids


def report(label: str, timings: list[float], baseline: list[float], target_ms: float) -> bool:
    p50, p95 = statistics.median(timings), percentile(timings, 95)
    base50, base95 = statistics.median(baseline), percentile(baseline, 95)
    ok = p95 < target_ms
    print(f"{label}: p50 {p50:7.1f} ms  p95 {p95:7.1f} ms   baseline p50 {base50:7.1f} ms  p95 {base95:7.1f} ms   "
          f"ratio p50 {p50 / base50:4.2f}x   target p95 < {target_ms:.0f} ms: {'ok' if ok else 'MISSED'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000, help="runs in the list benchmark")
    parser.add_argument("--compare-runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3000, help="train steps (×3 series) per compared run")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="trainboard-bench-") as data_dir:
        os.environ.setdefault("DATA_DIR", data_dir)
        os.environ["TRAINBOARD_ENV_FILE"] = ""
        os.environ["WATCHDOG_INTERVAL_S"] = "3600"
        from fastapi.testclient import TestClient

        from app.main import create_app

        app = create_app()
        with TestClient(app) as client:
            print(f"database: {app.state.settings.DATABASE_URL.split('@')[-1]}")
            started = time.perf_counter()
            insert_runs(app.state.engine, args.runs)
            compared = insert_compared_runs(app.state.engine, args.compare_runs, args.steps)
            print(f"inserted {args.runs:,} + {args.compare_runs} runs "
                  f"({args.compare_runs * (args.steps * 3 + args.steps // 50 * 2):,} metric points) "
                  f"in {time.perf_counter() - started:.1f} s; {args.repeats} timed requests each\n")

            ok = True
            for query in ("", "sort=best_val_acc&order=desc", "status=succeeded&sort=lr&order=asc",
                          "q=run-99&per_page=100", "page=150"):
                page_query = query.replace("per_page", "limit")
                if "page=150" in query:
                    page_query = "offset=7450"
                ok &= report(f"runs list  /?{query:<36}", timed(fetch(client, f"/?{query}"), args.repeats),
                             timed(fetch(client, f"/api/runs?{page_query}"), args.repeats), LIST_TARGET_MS)

            ids = ",".join(map(str, compared))
            api_urls = [f"/api/compare?ids={ids}"] + [f"/api/runs/{run_id}/metrics" for run_id in compared]
            ok &= report(f"compare    {len(compared)} runs{'':<30}", timed(fetch(client, f"/compare?ids={ids}"),
                                                                        max(args.repeats // 2, 5)),
                         timed(fetch_all(client, api_urls), max(args.repeats // 2, 5)), COMPARE_TARGET_MS)
            ok &= report(f"run page   1 run, {args.steps * 3:,} points{'':<17}",
                         timed(fetch(client, f"/runs/{compared[0]}"), args.repeats),
                         timed(fetch(client, f"/api/runs/{compared[0]}/metrics"), args.repeats), COMPARE_TARGET_MS)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
