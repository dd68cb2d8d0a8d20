"""Fixtures for the app tests: rows made directly in the database, and the broker's queue folder."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from app.core.config import Settings
from app.core.db import utcnow
from app.models import Run, RunStatus


@pytest.fixture
def make_run(engine: Any) -> Callable[..., Run]:
    """make_run(**fields): insert a run row as it would look after create_runs (no dispatch)."""
    def make(**fields: Any) -> Run:
        values: dict[str, Any] = {
            # The built-in sample: a clone or sweep of the run passes the launch checks anywhere.
            "name": "run", "model": "task1", "dataset": {"kind": "imagefolder", "name": "cifar10-sample"},
            "hyperparameters": {"lr": 0.05, "batch_size": 64}, "parameters": 390410,
            "status": RunStatus.queued, "created_at": utcnow(),
        }
        values.update(fields)
        with Session(engine) as session:
            run = Run(**values)
            session.add(run)
            session.commit()
            session.refresh(run)
            session.expunge(run)
            return run

    return make


def queued_task_messages(settings: Settings) -> list[dict[str, Any]]:
    """The task messages waiting in the filesystem broker's folder: [{"task", "args", "queue"}]."""
    folder = Path(settings.broker_transport_options()["data_folder_out"])
    messages = []
    for path in sorted(folder.glob("*.msg")):
        raw = json.loads(path.read_text())
        args, _kwargs, _embed = json.loads(base64.b64decode(raw["body"]))
        messages.append({"task": raw["headers"]["task"], "args": args, "queue": path.name.split(".")[-2]})
    return messages


@pytest.fixture
def broker_messages(settings: Settings) -> Callable[[], list[dict[str, Any]]]:
    return lambda: queued_task_messages(settings)
