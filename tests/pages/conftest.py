"""Fixtures for the page tests: runs in any status made through the service functions, and HTML helpers.

The test modules get the helpers through the `html` fixture (tests are not a package,
so they cannot import each other).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from app.core.config import Settings
from app.models import RunCreate, RunStatus
from app.services import lifecycle, runs

FAILED_ERROR = "Traceback (most recent call last):\n  File \"train.py\", line 3\nRuntimeError: CUDA out of memory"


@dataclass
class Seeder:
    """Makes runs as a worker would leave them: created, claimed, with metrics, finished."""

    engine: Engine
    settings: Settings

    def run(self, status: str = RunStatus.queued, *, name: str = "run", model: str = "task1",
            tags: list[str] | None = None, notes: str = "", hyperparameters: dict[str, Any] | None = None,
            points: int = 0, final_metrics: dict[str, float] | None = None,
            best_metrics: dict[str, float] | None = None, error: str | None = None) -> int:
        """A run in `status` with `points` steps of train/loss, train/lr and (every 10th) val/acc, val/loss."""
        with Session(self.engine) as session:
            [run] = runs.create_runs(session=session, settings=self.settings, runs_in=[RunCreate(
                model=model, name=name, tags=tags or [], notes=notes, hyperparameters=hyperparameters or {})])
            run_id = run.id
            if status == RunStatus.queued:
                return run_id
            lifecycle.claim_run(session=session, run_id=run_id, hostname="test-host", max_redeliveries=3)
            if points:
                lifecycle.add_metric_points(session=session, run_id=run_id, points=metric_points(points))
            lifecycle.update_progress(session=session, run_id=run_id, epoch=1.5, step=max(points, 30),
                                      total_steps=100, images_per_s=1234.5, best_metrics=best_metrics)
            if status == RunStatus.running:
                return run_id
            if status == RunStatus.failed and error is None:
                error = FAILED_ERROR
            lifecycle.finish_run(session=session, run_id=run_id, status=status, error=error,
                                 final_metrics=final_metrics if final_metrics is not None else default_final(status),
                                 best_metrics=best_metrics or {"val/acc": 0.7})
        return run_id

    def one_of_each_status(self) -> dict[str, int]:
        return {status.value: self.run(status, name=f"{status.value}-run", points=20) for status in RunStatus}


def default_final(status: str) -> dict[str, float]:
    if status != RunStatus.succeeded:
        return {}
    return {"train/loss": 0.41, "val/loss": 0.62, "train/acc": 0.85, "val/acc": 0.7123, "test/acc": 0.7011}


def metric_points(steps: int) -> list[dict[str, Any]]:
    points = []
    for step in range(steps):
        epoch = step / 10
        points += [{"step": step, "epoch": epoch, "name": "train/loss", "value": 2.0 / (step + 1), "time": step * 0.1},
                   {"step": step, "epoch": epoch, "name": "train/lr", "value": 0.05, "time": step * 0.1}]
        if step % 10 == 9:
            points += [
                {"step": step, "epoch": epoch, "name": "val/acc", "value": 0.5 + step / (4 * steps), "time": step * 0.1},
                {"step": step, "epoch": epoch, "name": "val/loss", "value": 1.0 / (step + 1), "time": step * 0.1},
            ]
    return points


@pytest.fixture
def seed(engine: Engine, settings: Settings) -> Seeder:
    return Seeder(engine, settings)


# --------------------------------------------------------------------- HTML ---

class _ElementCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))


def elements(html: str, tag: str | None = None) -> list[dict[str, str | None]]:
    """The attributes of every start tag (named `tag`, or all)."""
    parser = _ElementCollector()
    parser.feed(html)
    return [attrs for name, attrs in parser.elements if tag is None or name == tag]


def json_block(html: str, block_id: str) -> Any:
    """The parsed JSON of <script type="application/json" id=block_id>."""
    match = re.search(rf'<script type="application/json" id="{re.escape(block_id)}">(.*?)</script>', html, re.S)
    assert match, f"no JSON block {block_id!r}"
    return json.loads(match.group(1))


def table_rows(html: str, table_class: str) -> list[str]:
    """The <tr> elements (as HTML) of the first table's body whose class contains table_class."""
    match = re.search(rf'<table class="[^"]*{table_class}[^"]*"[^>]*>.*?<tbody>(.*?)</tbody>', html, re.S)
    assert match, f"no table {table_class!r}"
    return re.findall(r"<tr\b.*?</tr>", match.group(1), re.S)


def data_run_ids(html: str) -> list[int]:
    """The run ids of the runs list's rows, in order."""
    return [int(run_id) for run_id in re.findall(r'<tr data-run-id="(\d+)"', html)]


@pytest.fixture
def html() -> SimpleNamespace:
    return SimpleNamespace(elements=elements, json_block=json_block, table_rows=table_rows, run_ids=data_run_ids)


@pytest.fixture
def token_client(client_factory: Callable[..., Any]) -> Any:
    """A client of an app that needs TRAINBOARD_API_TOKEN="page-token-0123456789"."""
    return client_factory(TRAINBOARD_API_TOKEN="page-token-0123456789")
