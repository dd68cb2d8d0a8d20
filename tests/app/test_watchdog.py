"""The app's background watchdog fails runs whose worker went silent."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient

from app.core.db import utcnow
from app.main import run_watchdog_once
from app.models import Run, RunStatus


def test_watchdog_loop_fails_stale_runs_with_event(client_factory: Callable[..., TestClient],
                                                   make_run: Callable[..., Run],
                                                   wait_until: Callable[..., float]) -> None:
    old = utcnow() - timedelta(minutes=10)
    stale = make_run(status=RunStatus.running, started_at=old, heartbeat_at=old).id
    alive = make_run(status=RunStatus.running, started_at=old, heartbeat_at=utcnow() + timedelta(minutes=5)).id
    client = client_factory(WATCHDOG_INTERVAL_S=0.05, HEARTBEAT_TIMEOUT_S=60)
    # Ends as soon as the run has failed; 60 s only bounds a failure.
    wait_until(lambda: client.get(f"/api/runs/{stale}").json()["status"] != "running", 60,
               "the watchdog failing the stale run", poll_s=0.05)
    run = client.get(f"/api/runs/{stale}").json()
    assert run["status"] == "failed" and run["error"].startswith("worker lost: no heartbeat for 600 s")
    assert client.get(f"/api/runs/{stale}/history").json()[-1]["kind"] == "worker_lost"
    assert client.get(f"/api/runs/{alive}").json()["status"] == "running"


def test_run_watchdog_once_returns_lost_ids(engine: Any, make_run: Callable[..., Run], settings: Any) -> None:
    # No app here: a running app's own watchdog loop could fail the run first.
    old = utcnow() - timedelta(minutes=10)
    stale = make_run(status=RunStatus.running, started_at=old).id
    assert run_watchdog_once(engine, settings) == [stale]
    assert run_watchdog_once(engine, settings) == []
