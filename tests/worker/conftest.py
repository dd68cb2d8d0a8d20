"""Fixtures for worker tests: a fresh SQLite database per test, runs in it, and a tiny CIFAR-10 subset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlmodel import Session, select

from app.core.config import Settings, get_settings
from app.core.db import get_engine, init_db
from app.models import MetricPoint, Run, RunCreate, RunEvent
from app.services.runs import create_runs

REPO = Path(__file__).resolve().parents[2]
EVAL_METRIC_NAMES = {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"}
SETTINGS_VARIABLES = ("DATA_DIR", "DATABASE_URL", "BROKER_URL", "ARTIFACTS_DIR", "DATASETS_DIR", "DATASET_ROOTS",
                      "TRAINBOARD_API_TOKEN", "HEARTBEAT_TIMEOUT_S")


@pytest.fixture
def worker_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings with every path under tmp_path (SQLite, filesystem broker), schema migrated."""
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRAINBOARD_ENV_FILE", "")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    # The tests' image folders live under pytest's temporary folder: an allowed dataset root.
    monkeypatch.setenv("DATASET_ROOTS", str(tmp_path.parent))
    get_settings.cache_clear()
    get_engine.cache_clear()
    settings = get_settings()
    settings.ensure_dirs()
    init_db()
    yield settings
    get_engine().dispose()
    get_engine.cache_clear()
    get_settings.cache_clear()


class RunsDb:
    """Test helpers over the current engine: insert runs, read them back with their points and events."""

    @staticmethod
    def queue(dataset: dict[str, Any], model: str = "task1", **hyperparameters: Any) -> int:
        """Insert a queued run (not sent to any broker) and return its id."""
        run_in = RunCreate.model_validate({"model": model, "dataset": dataset, "hyperparameters": hyperparameters})
        with Session(get_engine()) as session:
            return create_runs(session=session, runs_in=[run_in])[0].id

    @staticmethod
    def tiny_dataset(root: Path, limit_train: int = 500) -> dict[str, Any]:
        return {"kind": "imagefolder", "path": str(root), "limit_train": limit_train}

    @staticmethod
    def run(run_id: int) -> Run:
        with Session(get_engine(), expire_on_commit=False) as session:
            run = session.get(Run, run_id)
            assert run is not None
            return run

    @staticmethod
    def points(run_id: int) -> list[MetricPoint]:
        with Session(get_engine()) as session:
            return list(session.exec(select(MetricPoint).where(MetricPoint.run_id == run_id)
                                     .order_by(MetricPoint.id)).all())

    @staticmethod
    def events(run_id: int) -> list[RunEvent]:
        with Session(get_engine()) as session:
            return list(session.exec(select(RunEvent).where(RunEvent.run_id == run_id)
                                     .order_by(RunEvent.id)).all())


@pytest.fixture
def db(worker_settings: Settings) -> RunsDb:
    return RunsDb()
