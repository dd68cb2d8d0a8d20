"""The study reproduced over seeds: launch its presets × N seeds as one group (POST /api/study).

The runs are ordinary runs (app.services.runs.submit_runs creates and dispatches
them); what makes them a group is one shared tag, "study:<random>", as a sweep's
runs share "sweep:<random>". The report (app.services.report) then counts every
run that follows a preset's recipe, whichever group it came from.
"""

from __future__ import annotations

import secrets

from sqlmodel import Session

from app.core.config import Settings, get_settings
from app.models import HyperparametersIn, Run, RunCreate, StudyCreate
from app.services.errors import InvalidInput, Loc
from app.services.report import STUDY_PRESETS
from app.services.run_config import resolve_run_config
from app.services.runs import Dispatcher, submit_runs

STUDY_TAG_PREFIX = "study:"


def _check(study_in: StudyCreate, presets: list[str], max_runs: int) -> None:
    """Only the study's presets, on the whole data set (a subset's numbers are not the study's), within the cap."""
    errors: list[tuple[Loc, str]] = []
    for index, preset in enumerate(study_in.presets or []):
        if preset not in STUDY_PRESETS:
            errors.append((("presets", index), f"not a study preset; valid: {', '.join(STUDY_PRESETS)}"))
    if study_in.presets is not None and not study_in.presets:
        errors.append((("presets",), "give at least one preset"))
    for limit in ("limit_train", "limit_test"):
        if getattr(study_in.dataset, limit) is not None:
            errors.append((("dataset", limit), "a study uses the whole data set: runs on a subset are not "
                                               "comparable with the study's numbers"))
    if study_in.dataset.augment:
        errors.append((("dataset", "augment"), "the study's recipe trains without augmentation"))
    total = len(presets) * study_in.seeds
    if total > max_runs:
        errors.append((("seeds",), f"{len(presets)} presets × {study_in.seeds} seeds = {total} runs; "
                                   f"at most {max_runs} (MAX_SWEEP_RUNS)"))
    if errors:
        raise InvalidInput(errors)


def create_study(*, session: Session, study_in: StudyCreate, settings: Settings | None = None,
                 dispatch: Dispatcher | None = None) -> tuple[str, list[Run]]:
    """Queue every preset with seeds first_seed … first_seed + seeds − 1, each with the preset's own
    hyperparameters; returns the group's tag and the runs (preset by preset, seed by seed)."""
    settings = settings or get_settings()
    presets = list(dict.fromkeys(study_in.presets or STUDY_PRESETS))
    _check(study_in, presets, settings.MAX_SWEEP_RUNS)
    group = f"{STUDY_TAG_PREFIX}{secrets.token_hex(3)}"
    seeds = range(study_in.first_seed, study_in.first_seed + study_in.seeds)
    # No dataset given: each run gets the launch default (CIFAR-10 when present, else the sample).
    data = {"dataset": study_in.dataset} if "dataset" in study_in.model_fields_set else {}
    runs_in = [
        RunCreate(name=f"{preset} seed {seed}", model=preset, hyperparameters=HyperparametersIn(seed=seed),
                  tags=[group], **data)
        for preset in presets for seed in seeds
    ]
    # The runs differ only in model and seed: a bad dataset is reported once, at ("dataset", …).
    resolve_run_config(runs_in[0], settings=settings)
    runs = submit_runs(session=session, runs_in=runs_in, settings=settings, dispatch=dispatch,
                       event_message=f"queued (study {group})")
    return group, runs
