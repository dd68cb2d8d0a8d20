"""Run CRUD for the API: create (and dispatch), list, read, edit, cancel, delete, clone, sweep, compare.

Every function is keyword-only with the session first and raises the domain
errors of app.services.errors (NotFound, Conflict, InvalidInput, BrokerUnavailable).
The lifecycle functions a worker calls (claim, heartbeat, finish) live in
app.services.lifecycle; metric reads in app.services.metrics.
"""

from __future__ import annotations

import itertools
import json
import math
import secrets
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError
from sqlalchemy import ColumnElement, cast, delete, exists, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session

from app.core.config import Settings, get_settings
from app.core.db import begin_write, is_sqlite, utcnow
from app.core.security import id_exists_in_range
from app.models import (
    TERMINAL_STATUSES,
    HyperparametersIn,
    MetricPoint,
    Run,
    RunClone,
    RunCreate,
    RunEvent,
    RunEventKind,
    RunStatus,
    RunUpdate,
    SweepCreate,
)
from app.services import grouping
from app.services.dispatch import dispatch_train_runs
from app.services.errors import Conflict, Forbidden, InvalidInput, Loc, NotFound
from app.services.run_config import resolve_run_config, run_request_of

Dispatcher = Callable[..., None]

SORT_COLUMNS: dict[str, Any] = {
    "created_at": Run.created_at,
    "started_at": Run.started_at,
    "finished_at": Run.finished_at,
    "name": Run.name,
    "model": Run.model,
    "status": Run.status,
    "parameters": Run.parameters,
    "best_val_acc": Run.best_val_acc,
    "test_acc": Run.test_acc,
    "duration": Run.duration_s,
    "id": Run.id,
    # Keys of the hyperparameters JSON, for the runs page's columns (no index: a scan, ~10 ms at 10k runs).
    "lr": Run.hyperparameters["lr"].as_float(),
    "batch_size": Run.hyperparameters["batch_size"].as_integer(),
    "epochs": Run.hyperparameters["epochs"].as_integer(),
    "optimizer": Run.hyperparameters["optimizer"].as_string(),
}
SORT_ORDERS = ("asc", "desc")
MAX_COMPARE = 50


# ---------------------------------------------------------------- reading ---

def get_run(*, session: Session, run_id: int) -> Run:
    """The run, or NotFound (also for an id the id column cannot hold, which the driver would refuse)."""
    run = session.get(Run, run_id) if id_exists_in_range(run_id) else None
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def list_runs(*, session: Session, status: Sequence[str] | None = None, model: str | None = None,
              q: str | None = None, tag: str | None = None, sort: str = "created_at",
              order: str = "desc", limit: int = 50, offset: int = 0) -> tuple[list[Run], int]:
    """One page of runs and the total count matching the filters.

    status: any of the given statuses; q: case-insensitive substring of name or notes;
    tag: runs carrying that tag; sort: a key of SORT_COLUMNS (NULLs last); order: asc|desc.
    """
    if sort not in SORT_COLUMNS:
        raise InvalidInput([(("sort",), f"unknown sort key {sort!r}; valid: {', '.join(SORT_COLUMNS)}")])
    if order not in SORT_ORDERS:
        raise InvalidInput([(("order",), "must be asc or desc")])
    conditions = _run_filters(session, status=status, model=model, q=q, tag=tag)

    column = SORT_COLUMNS[sort]
    ordering = (column.asc() if order == "asc" else column.desc()).nulls_last()
    tie_break = Run.id.asc() if order == "asc" else Run.id.desc()  # stable pages
    runs = session.scalars(
        select(Run).where(*conditions).order_by(ordering, tie_break).limit(limit).offset(offset)
    ).all()
    count = session.scalar(select(func.count()).select_from(Run).where(*conditions))
    return list(runs), int(count or 0)


def _run_filters(session: Session, *, status: Sequence[str] | None, model: str | None,
                 q: str | None, tag: str | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if status:
        unknown = sorted(set(status) - set(RunStatus))
        if unknown:
            raise InvalidInput([(("status",), f"unknown status {unknown[0]!r}; valid: {', '.join(RunStatus)}")])
        conditions.append(Run.status.in_(list(status)))
    if model:
        conditions.append(Run.model == model)
    if q:
        conditions.append(Run.name.icontains(q, autoescape=True) | Run.notes.icontains(q, autoescape=True))
    if tag:
        conditions.append(_has_tag(session, tag))
    return conditions


def _has_tag(session: Session, tag: str) -> ColumnElement[bool]:
    """Run.tags (a JSON list) contains `tag`, exactly."""
    if is_sqlite(session):
        each = func.json_each(Run.tags).table_valued("value").alias("tag_item")
        return exists(select(each.c.value).where(each.c.value == tag))
    return cast(Run.tags, JSONB).contains([tag])


def list_events(*, session: Session, run_id: int, after_id: int = 0) -> list[RunEvent]:
    """The run's history in order (entries with id > after_id)."""
    get_run(session=session, run_id=run_id)
    return list(session.scalars(
        select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.id > after_id).order_by(RunEvent.id)
    ).all())


# --------------------------------------------------------------- creating ---

def create_runs(*, session: Session, runs_in: Sequence[RunCreate], settings: Settings | None = None,
                cloned_from: int | None = None, error_locs: Sequence[Loc] | None = None,
                event_message: str = "queued") -> list[Run]:
    """Insert queued runs in one transaction, each with a "queued" event.

    Names default to "<model>-<id>". error_locs prefixes each request's error locations.
    """
    settings = settings or get_settings()
    locs = list(error_locs or [()] * len(runs_in))
    resolved = [resolve_run_config(run_in, settings=settings, loc=loc) for run_in, loc in zip(runs_in, locs)]
    now = utcnow()
    begin_write(session)
    runs = [
        Run(name=run_in.name or "", model=config.model, dataset=config.dataset,
            hyperparameters=config.hyperparameters, parameters=config.parameters,
            status=RunStatus.queued, created_at=now, tags=run_in.tags, notes=run_in.notes,
            cloned_from=cloned_from)
        for run_in, config in zip(runs_in, resolved)
    ]
    session.add_all(runs)
    session.flush()  # assigns the ids the default names need
    for run in runs:
        run.name = run.name or f"{run.model}-{run.id}"
        session.add(RunEvent(run_id=run.id, time=now, kind=RunEventKind.queued, message=event_message))
    session.commit()
    for run in runs:
        session.refresh(run)
    return runs


def submit_runs(*, session: Session, runs_in: Sequence[RunCreate], settings: Settings | None = None,
                dispatch: Dispatcher | None = None, **create_options: Any) -> list[Run]:
    """Insert the runs, then send them to the workers. If the broker is down, the runs are
    deleted again and BrokerUnavailable propagates: nothing half-created stays behind.

    The insert commits before dispatching, so a worker that gets the task at once finds the run.
    """
    settings = settings or get_settings()
    runs = create_runs(session=session, runs_in=runs_in, settings=settings, **create_options)
    run_ids = [run.id for run in runs]
    try:
        if dispatch is None:  # the real one also sends each run's created_at, checked on claim
            dispatch_train_runs(run_ids, settings=settings, queued_at={run.id: run.created_at for run in runs})
        else:
            dispatch(run_ids, settings=settings)
    except Exception:
        _delete_rows(session, run_ids)
        raise
    return runs


def clone_run(*, session: Session, run_id: int, overrides: RunClone, settings: Settings | None = None,
              dispatch: Dispatcher | None = None) -> Run:
    """Queue a copy of run `run_id` with `overrides` merged in (cloned_from records the origin).

    dataset and hyperparameters merge key by key. A different model restarts the
    hyperparameters from that model's preset, plus the overrides given.
    """
    original = get_run(session=session, run_id=run_id)
    request = run_request_of(original)
    changes = overrides.model_dump(exclude_unset=True)
    if changes.get("model") not in (None, original.model):
        request["hyperparameters"] = {}
    for key in ("name", "model", "tags", "notes"):
        if changes.get(key) is not None:
            request[key] = changes[key]
    request["dataset"] = {**request["dataset"], **(changes.get("dataset") or {})}
    request["hyperparameters"] = {**request["hyperparameters"], **(changes.get("hyperparameters") or {})}
    run_in = _validated_run_create(request)
    return submit_runs(session=session, runs_in=[run_in], settings=settings, dispatch=dispatch,
                       cloned_from=original.id, event_message=f"queued (clone of run {original.id})")[0]


def _validated_run_create(request: dict[str, Any], loc: Loc = ()) -> RunCreate:
    try:
        return RunCreate.model_validate(request)
    except ValidationError as err:
        raise InvalidInput([((*loc, *e["loc"]), e["msg"]) for e in err.errors()]) from None


def create_sweep(*, session: Session, sweep_in: SweepCreate, settings: Settings | None = None,
                 dispatch: Dispatcher | None = None) -> list[Run]:
    """Queue one run per combination of the grid's values (at most settings.MAX_SWEEP_RUNS).

    The runs share a tag "sweep:<random>" and are named "<base name or model> [lr=0.1, batch_size=32]".
    """
    settings = settings or get_settings()
    if sweep_in.base_run_id is not None:
        base_request = run_request_of(get_run(session=session, run_id=sweep_in.base_run_id))
        base_loc: Loc = ("base_run_id",)
    else:
        assert sweep_in.base is not None
        base_request = sweep_in.base.model_dump(exclude_unset=True, exclude_none=True)
        base_loc = ("base",)
    base = _validated_run_create(base_request, base_loc)
    _check_grid(sweep_in.grid, settings.MAX_SWEEP_RUNS)

    sweep_tag = f"sweep:{secrets.token_hex(3)}"
    keys = list(sweep_in.grid)
    runs_in, locs = [], []
    for values in itertools.product(*(sweep_in.grid[key] for key in keys)):
        combination = dict(zip(keys, values))
        label = ", ".join(f"{key}={json.dumps(value)}" for key, value in combination.items())
        hyperparameters = {**base.hyperparameters.model_dump(exclude_none=True), **combination}
        runs_in.append(base.model_copy(update={
            "name": f"{base.name or base.model} [{label}]"[:200],
            "hyperparameters": HyperparametersIn.model_validate(hyperparameters),
            "tags": [*base.tags, sweep_tag],
        }))
        locs.append(("grid", label))
    return submit_runs(session=session, runs_in=runs_in, settings=settings, dispatch=dispatch,
                       error_locs=locs, event_message=f"queued (sweep {sweep_tag})")


def _check_grid(grid: dict[str, list[Any]], max_runs: int) -> None:
    """Each grid key must be a hyperparameter and each value valid for it; the product is capped."""
    valid = list(HyperparametersIn.model_fields)
    errors: list[tuple[Loc, str]] = []
    if not grid:
        errors.append((("grid",), "give at least one hyperparameter with a list of values"))
    for key, values in grid.items():
        if key not in valid:
            errors.append((("grid", key), f"unknown hyperparameter; valid: {', '.join(valid)}"))
        elif not values:
            errors.append((("grid", key), "give at least one value"))
        else:
            for index, value in enumerate(values):
                try:
                    HyperparametersIn.model_validate({key: value})
                except ValidationError as err:
                    errors.extend((("grid", key, index), e["msg"]) for e in err.errors())
    combinations = math.prod(len(values) for values in grid.values()) if grid else 0
    if combinations > max_runs:
        errors.append((("grid",), f"{combinations} combinations; a sweep has at most {max_runs} runs"))
    if errors:
        raise InvalidInput(errors)


# --------------------------------------------------------------- changing ---

def _abort(session: Session, error: Exception) -> NoReturn:
    """Release the write transaction (SQLite's write lock) before reporting the error."""
    session.rollback()
    raise error


def update_run(*, session: Session, run_id: int, run_update: RunUpdate) -> Run:
    """Edit name, tags and notes (the fields given). With `version`, Conflict unless the run is still at it."""
    begin_write(session)
    run = session.get(Run, run_id, with_for_update=True, populate_existing=True)
    if run is None:
        _abort(session, NotFound(f"run {run_id} not found"))
    changes = run_update.model_dump(exclude_unset=True)
    based_on = changes.pop("version", None)
    if based_on is not None and based_on != run.version:
        _abort(session, Conflict(f"run {run_id} was edited meanwhile (version {run.version}, this edit is based "
                                 f"on version {based_on}); reload it and edit again"))
    for key, value in changes.items():
        if value is not None:
            setattr(run, key, value)
    run.version += 1
    session.commit()
    session.refresh(run)
    return run


def request_cancel(*, session: Session, run_id: int) -> Run:
    """Cancel: a queued run is cancelled at once; a running one gets cancel_requested (the worker
    stops between steps). Conflict when the run already finished."""
    begin_write(session)
    run = session.get(Run, run_id, with_for_update=True, populate_existing=True)
    if run is None:
        _abort(session, NotFound(f"run {run_id} not found"))
    if run.status in TERMINAL_STATUSES:
        _abort(session, Conflict(f"run {run_id} already {run.status}; there is nothing to cancel"))
    now = utcnow()
    if run.status == RunStatus.queued:
        run.status, run.finished_at = RunStatus.cancelled, now
        session.add(RunEvent(run_id=run.id, time=now, kind=RunEventKind.cancelled,
                             message="cancelled before a worker started it"))
    elif not run.cancel_requested:
        run.cancel_requested = True
        session.add(RunEvent(run_id=run.id, time=now, kind=RunEventKind.cancel_requested,
                             message="cancel requested; the worker stops after its current step"))
    session.commit()
    session.refresh(run)
    return run


def delete_run(*, session: Session, run_id: int, settings: Settings | None = None) -> None:
    """Delete a run that is not running, with its metrics, events and ARTIFACTS_DIR/<id>/."""
    settings = settings or get_settings()
    begin_write(session)
    run = session.get(Run, run_id, with_for_update=True, populate_existing=True)
    if run is None:
        _abort(session, NotFound(f"run {run_id} not found"))
    if run.status == RunStatus.running:
        _abort(session, Conflict(f"run {run_id} is running; cancel it first"))
    _delete_rows(session, [run_id])
    shutil.rmtree(run_artifacts_dir(run_id, settings), ignore_errors=True)


def _delete_rows(session: Session, run_ids: list[int]) -> None:
    """Delete runs with their points and events in one transaction (clones keep cloned_from=NULL)."""
    begin_write(session)
    session.execute(delete(MetricPoint.__table__).where(MetricPoint.run_id.in_(run_ids)))
    session.execute(delete(RunEvent.__table__).where(RunEvent.run_id.in_(run_ids)))
    session.execute(delete(Run.__table__).where(Run.id.in_(run_ids)))
    session.commit()
    session.expunge_all()


def run_artifacts_dir(run_id: int, settings: Settings) -> Path:
    return settings.ARTIFACTS_DIR / str(run_id)


def checkpoint_file(*, session: Session, run_id: int, settings: Settings | None = None) -> Path:
    """The run's last checkpoint file. Forbidden when its path leads outside ARTIFACTS_DIR
    (symlinks resolved), NotFound when there is none."""
    settings = settings or get_settings()
    run = get_run(session=session, run_id=run_id)
    if not run.checkpoint_path:
        raise NotFound(f"run {run_id} has no checkpoint")
    artifacts = settings.ARTIFACTS_DIR.resolve()
    path = (artifacts / run.checkpoint_path).resolve()  # an absolute checkpoint_path replaces the base
    if not path.is_relative_to(artifacts):
        raise Forbidden(f"run {run_id}'s checkpoint path is outside ARTIFACTS_DIR; refusing to serve it")
    if not path.is_file():
        raise NotFound(f"run {run_id}'s checkpoint file is missing")
    return path


# -------------------------------------------------------------- comparing ---

def compare_runs(*, session: Session, run_ids: Sequence[int], group_by: str | None = None) -> dict[str, Any]:
    """Runs side by side: their hyperparameters, which of those differ, and their metrics.

    With `group_by` ("model" or a differing setting, grouping.grouping_keys), also the runs grouped
    by that setting's value with their final metrics' mean ± std (grouping.RunGroup); any other
    value is an InvalidInput on group_by.
    """
    if not run_ids:
        raise InvalidInput([(("ids",), "give at least one run id")])
    if len(run_ids) > MAX_COMPARE:
        raise InvalidInput([(("ids",), f"compare at most {MAX_COMPARE} runs")])
    queried = [run_id for run_id in run_ids if id_exists_in_range(run_id)]
    found = {run.id: run for run in session.scalars(select(Run).where(Run.id.in_(queried))).all()}
    missing = [run_id for run_id in run_ids if run_id not in found]
    if missing:
        raise NotFound(f"runs not found: {', '.join(map(str, missing))}")
    runs = [found[run_id] for run_id in dict.fromkeys(run_ids)]

    settings_of = [{"model": run.model, **{f"dataset.{k}": v for k, v in run.dataset.items()},
                    **run.hyperparameters} for run in runs]
    keys = list(dict.fromkeys(key for values in settings_of for key in values))
    differing = [key for key in keys
                 if len({json.dumps(values.get(key), sort_keys=True) for values in settings_of}) > 1]
    metric_names = sorted({name for run in runs for name in (*run.final_metrics, *run.best_metrics)})
    group_by = grouping.check_group_by(group_by, differing)
    groups = grouping.group_runs(runs, group_by) if group_by else []
    return {"runs": runs, "differing": differing, "metric_names": metric_names, "group_by": group_by, "groups": groups}
