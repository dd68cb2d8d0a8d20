"""Time until a run page with 100,000 metric points is interactive with its charts drawn, in Chromium.

A run with 100,000 points (a 94,000-step train/loss plus val/loss, val/acc and
train/lr of 2,000 points each) and a baseline run with 100 points are written
straight into a fresh SQLite database; uvicorn serves the app from it. Headless
Chromium (Playwright) opens each run page several times; the time is measured
in the page, from navigation start (performance.now() = 0) to the first frame in
which every chart div has been drawn by Plotly (`_fullLayout` set, data
present). The server downsamples each series to METRICS_MAX_POINTS and the page
draws series of more than a few thousand points with WebGL (scattergl).

Target: the 100,000-point page under 1 s (median of the warm loads). Printed
with its ratio to the 100-point baseline measured in the same run.

    .venv/bin/python bench/run_page_browser.py [--repeats 7] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import insert  # noqa: E402
from sqlmodel import Session  # noqa: E402

from app.core.config import Settings  # noqa: E402
from app.core.db import create_db_engine, migrate, utcnow  # noqa: E402
from app.models import MetricPoint, Run, RunStatus  # noqa: E402

TARGET_S = 1.0
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# performance.now() (ms since navigation start) in the first frame where every chart is drawn, else false.
CHARTS_DRAWN = """() => {
  const charts = Array.from(document.querySelectorAll('.chart[data-figure]'));
  const drawn = charts.length > 0 && charts.every(gd => gd._fullLayout && Array.isArray(gd.data)
    && gd.data.length > 0 && gd.querySelector('.main-svg'));
  return drawn && performance.now();
}"""


# --------------------------------------------------------------------- data ---

def insert_run(engine: Any, name: str, points: list[dict[str, Any]]) -> int:
    now = utcnow()
    with Session(engine) as session:
        run = Run(name=name, model="task1", dataset={"kind": "cifar10"}, parameters=390_410,
                  hyperparameters={"epochs": 100, "batch_size": 64, "lr": 0.05}, status=RunStatus.succeeded,
                  created_at=now, started_at=now, finished_at=now, duration_s=3600.0, epoch=100.0, step=94_000,
                  total_steps=94_000)
        session.add(run)
        session.flush()
        rows = [{"run_id": run.id, "split": p["name"].split("/")[0], **p} for p in points]
        for start in range(0, len(rows), 20_000):
            session.execute(insert(MetricPoint.__table__), rows[start:start + 20_000])
        session.commit()
        return run.id


def metric_points(train_steps: int, eval_points: int) -> list[dict[str, Any]]:
    """A noisy decaying train/loss per step, plus val/loss, val/acc and train/lr at `eval_points` evaluations."""
    steps = np.arange(train_steps)
    loss = np.exp(-steps / max(train_steps / 5, 1)) + 0.1 * np.sin(steps) + 0.3
    points = [{"step": int(s), "epoch": s / 940, "name": "train/loss", "value": float(v), "time": s * 0.05}
              for s, v in zip(steps, loss)]
    every = max(train_steps // max(eval_points, 1), 1)
    for i in range(eval_points):
        for name, value in (("val/loss", 1.0 / (i + 1) + 0.4), ("val/acc", 0.8 - 0.5 / (i + 1)), ("train/lr", 0.05)):
            points.append({"step": i * every, "epoch": i * every / 940, "name": name, "value": value,
                           "time": i * every * 0.05})
    return points


# ------------------------------------------------------------------- server ---

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "TRAINBOARD_ENV_FILE": "", "DATA_DIR": str(data_dir), "WATCHDOG_INTERVAL_S": "3600"}
    for key in ("DATABASE_URL", "BROKER_URL", "ARTIFACTS_DIR", "DATASETS_DIR", "TRAINBOARD_API_TOKEN"):
        env.pop(key, None)
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port), "--log-level",
                               "warning"], cwd=REPO, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start within 60 s")


# ------------------------------------------------------------------ browser ---

def page_load_s(page: Any, url: str) -> tuple[float, float, float]:
    """Seconds from navigation start to: charts drawn, the HTML's last byte, DOMContentLoaded (scripts run)."""
    page.goto(url, wait_until="commit")
    drawn_ms = page.wait_for_function(CHARTS_DRAWN, polling="raf", timeout=30_000).json_value()
    html_ms, scripts_ms = page.evaluate("() => { const n = performance.getEntriesByType('navigation')[0];"
                                        " return [n.responseEnd, n.domContentLoadedEventEnd]; }")
    return drawn_ms / 1000, html_ms / 1000, scripts_ms / 1000


def measure(browser: Any, base: str, run_id: int, repeats: int) -> dict[str, Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.on("pageerror", lambda err: errors.append(str(err)))
    cold = page_load_s(page, f"{base}/runs/{run_id}")  # the server reads the points from the database
    warm = [page_load_s(page, f"{base}/runs/{run_id}") for _ in range(repeats)]
    gl_traces = page.evaluate("() => Array.from(document.querySelectorAll('.chart[data-figure]'))"
                              ".flatMap(gd => gd.data.map(t => t.type)).filter(t => t === 'scattergl').length")
    points_drawn = page.evaluate("() => Array.from(document.querySelectorAll('.chart[data-figure]'))"
                                 ".flatMap(gd => gd.data.map(t => t.x.length)).reduce((a, b) => a + b, 0)")
    context.close()
    return {"cold": cold, "warm": warm, "gl_traces": gl_traces, "points_drawn": points_drawn, "errors": errors}


def report(label: str, result: dict[str, Any]) -> float:
    drawn, html, scripts = (statistics.median(load[i] for load in result["warm"]) for i in range(3))
    times = [load[0] * 1000 for load in result["warm"]]
    print(f"  {label:<22} charts drawn: median {drawn * 1000:4.0f} ms (min {min(times):.0f}, max {max(times):.0f};"
          f" first load {result['cold'][0] * 1000:.0f} ms) | HTML in {html * 1000:.0f} ms, scripts run by"
          f" {scripts * 1000:.0f} ms | {result['points_drawn']:,} points drawn, {result['gl_traces']} WebGL trace(s)")
    for error in result["errors"]:
        print(f"    page error: {error}")
    return drawn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="warm page loads per run (default 7)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        engine = create_db_engine(Settings(_env_file=None, DATA_DIR=data_dir).DATABASE_URL)
        migrate(engine)
        began = time.perf_counter()
        big = insert_run(engine, "100k points", metric_points(94_000, 2_000))
        small = insert_run(engine, "100 points (baseline)", metric_points(94, 2))
        engine.dispose()
        print(f"inserted 100,000 + 100 metric points in {time.perf_counter() - began:.1f} s")

        port = free_port()
        server = start_server(data_dir, port)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
                base = f"http://127.0.0.1:{port}"
                print(f"run page, navigation start → every chart drawn ({args.repeats} warm loads each, headless Chromium):")
                baseline = report("100 points (baseline)", measure(browser, base, small, args.repeats))
                loaded = report("100,000 points", measure(browser, base, big, args.repeats))
                browser.close()
        finally:
            server.terminate()
            server.wait(10)
    verdict = "OK" if loaded < TARGET_S else "OVER TARGET"
    print(f"100,000 points: {loaded * 1000:.0f} ms = {loaded / baseline:.2f}× the 100-point baseline "
          f"(target < {TARGET_S * 1000:.0f} ms: {verdict})")
    return 0 if loaded < TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
