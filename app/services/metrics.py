"""Reading metric series for charts: whole series downsampled, or the points after an id (live).

A chart reads every point of its series and sends at most `max_points` per
series (min-max downsampling keeps the extremes). Turning 100,000 rows into
Python objects takes longer than the whole request may, so each web process
keeps the series of recently viewed runs as numpy arrays and, on each request,
only reads the points added since (ids above the last one read: the points of
one run come from one writer, so ids follow commit order). The cache is
rebuilt when the run's points were truncated (a resume) or the run id now
belongs to another run (SQLite may reuse the id of a deleted last row).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

import numpy as np
from sqlalchemy import func, select
from sqlmodel import Session

from app.core.downsample import downsample_series
from app.models import MetricPoint, Run, RunEvent, RunEventKind
from app.services.errors import NotFound

COLUMNS = ("step", "epoch", "time", "value")
DEFAULT_CACHE_POINTS = 2_000_000  # ≈ 64 MB of float64/int64 columns


@dataclass
class _RunSeries:
    created_at: datetime
    last_point_id: int = 0
    last_truncation_id: int = 0
    points: int = 0
    # name → {"split": str, "step"/"epoch"/"time"/"value": np.ndarray}
    series: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class MetricsCache:
    """Per-process LRU of runs' full metric series, refreshed incrementally."""

    def __init__(self, max_points: int = DEFAULT_CACHE_POINTS):
        self.max_points = max_points
        self._runs: OrderedDict[int, _RunSeries] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._runs.clear()

    def series_of(self, session: Session, run: Run) -> dict[str, dict[str, Any]]:
        """All series of `run`, up to date with the database, as numpy columns."""
        truncation_id = _last_truncation_id(session, run.id)
        entry = self._entry(run, truncation_id)
        with entry.lock:
            rows = _points_after(session, run.id, entry.last_point_id)
            if rows:
                _append(entry, rows)
            snapshot = dict(entry.series)
        self._evict()
        return snapshot

    def _entry(self, run: Run, truncation_id: int) -> _RunSeries:
        with self._lock:
            entry = self._runs.get(run.id)
            if entry is None or entry.created_at != run.created_at or entry.last_truncation_id != truncation_id:
                entry = _RunSeries(created_at=run.created_at, last_truncation_id=truncation_id)
                self._runs[run.id] = entry
            self._runs.move_to_end(run.id)
            return entry

    def _evict(self) -> None:
        with self._lock:
            total = sum(entry.points for entry in self._runs.values())
            while total > self.max_points and len(self._runs) > 1:
                _, oldest = self._runs.popitem(last=False)
                total -= oldest.points


def _last_truncation_id(session: Session, run_id: int) -> int:
    """Id of the run's latest "metrics truncated" event (written by lifecycle.truncate_metrics)."""
    return session.scalar(
        select(func.max(RunEvent.id)).where(RunEvent.run_id == run_id,
                                            RunEvent.kind == RunEventKind.metrics_truncated)
    ) or 0


def _points_after(session: Session, run_id: int, after_id: int, limit: int | None = None) -> list[Any]:
    statement = (
        select(MetricPoint.id, MetricPoint.split, MetricPoint.name, MetricPoint.step,
               MetricPoint.epoch, MetricPoint.time, MetricPoint.value)
        .where(MetricPoint.run_id == run_id, MetricPoint.id > after_id)
        .order_by(MetricPoint.id)
    )
    if limit is not None:
        statement = statement.limit(limit)
    return list(session.execute(statement).all())


def _group_by_name(rows: list[Any]) -> dict[str, dict[str, Any]]:
    """Rows (id, split, name, step, epoch, time, value) → name → numpy columns, in id order."""
    _ids, splits, names, steps, epochs, times, values = zip(*rows)
    code_of: dict[str, int] = {}
    codes = np.fromiter((code_of.setdefault(name, len(code_of)) for name in names), np.int64, len(names))
    columns = {
        "step": np.asarray(steps, dtype=np.int64),
        "epoch": np.asarray(epochs, dtype=np.float64),
        "time": np.asarray(times, dtype=np.float64),
        # NULL (stored for NaN/inf) becomes NaN here and null in the response.
        "value": np.asarray(values, dtype=np.float64),
    }
    grouped = {}
    for name, code in code_of.items():
        mask = codes == code
        first = int(np.argmax(mask))
        grouped[name] = {"split": splits[first], **{key: column[mask] for key, column in columns.items()}}
    return grouped


def _append(entry: _RunSeries, rows: list[Any]) -> None:
    for name, new in _group_by_name(rows).items():
        old = entry.series.get(name)
        entry.series[name] = new if old is None else {
            "split": old["split"], **{key: np.concatenate([old[key], new[key]]) for key in COLUMNS}
        }
    entry.last_point_id = rows[-1][0]
    entry.points += len(rows)


def _in_step_order(columns: dict[str, Any]) -> dict[str, np.ndarray]:
    steps = columns["step"]
    if len(steps) > 1 and np.any(steps[1:] < steps[:-1]):
        order = np.argsort(steps, kind="stable")
        return {key: columns[key][order] for key in COLUMNS}
    return {key: columns[key] for key in COLUMNS}


def _json_values(values: np.ndarray) -> list[float | None]:
    return [None if v != v else v for v in values.tolist()]  # NaN → null


DEFAULT_METRICS_CACHE = MetricsCache()


def read_metrics(*, session: Session, run_id: int, names: Sequence[str] | None = None,
                 split: str | None = None, max_points: int = 2000,
                 cache: MetricsCache | None = None) -> list[dict[str, Any]]:
    """The run's series (all, or those in `names`, or of one `split`), each sorted by step and
    min-max downsampled to at most max_points points. NotFound for an unknown run.

    Each series: {"name", "step", "epoch", "time", "value", "downsampled", "total_points"}.
    """
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    all_series = (cache or DEFAULT_METRICS_CACHE).series_of(session, run)
    session.commit()  # end the read transaction before the numpy work
    wanted = list(dict.fromkeys(names)) if names else sorted(all_series)
    result = []
    for name in wanted:
        columns = all_series.get(name)
        if columns is None or (split and columns["split"] != split):
            continue
        ordered = _in_step_order(columns)
        kept, downsampled = downsample_series(ordered, max_points)
        result.append({
            "name": name,
            "step": kept["step"].tolist(),
            "epoch": kept["epoch"].tolist(),
            "time": kept["time"].tolist(),
            "value": _json_values(kept["value"]),
            "downsampled": downsampled,
            "total_points": len(ordered["step"]),
        })
    return result


def read_new_points(*, session: Session, run_id: int, after_id: int,
                    limit: int = 5000) -> tuple[list[dict[str, Any]], int]:
    """Points of the run with id > after_id (at most `limit`), as series fragments, and the last id.

    For the live stream; returns ([], after_id) when there is nothing new.
    """
    rows = _points_after(session, run_id, after_id, limit)
    if not rows:
        return [], after_id
    fragments = [
        {"name": name, "step": columns["step"].tolist(), "epoch": columns["epoch"].tolist(),
         "time": columns["time"].tolist(), "value": _json_values(columns["value"])}
        for name, columns in _group_by_name(rows).items()
    ]
    return fragments, int(rows[-1][0])
