"""Turn a RunCreate into what a run row stores: resolved hyperparameters, dataset, parameter count.

Pydantic already checked each field against ml/config.py's metadata. What is
left needs more than one field or the file system: the TrainConfig cross-field
rules (e.g. nesterov), the model options (validated by building the model, which
also gives the parameter count), and the dataset (app/services/datasets.py): a
name or a path inside the allowed roots, present, and larger than one batch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from app.core.config import Settings
from app.models import RunCreate
from app.services import catalog, datasets
from app.services.errors import InvalidInput, Loc


@dataclass
class ResolvedRun:
    model: str
    dataset: dict[str, Any]
    hyperparameters: dict[str, Any]
    parameters: int


def resolve_run_config(run_in: RunCreate, *, settings: Settings, loc: Loc = ()) -> ResolvedRun:
    """Merge preset and overrides and check what pydantic cannot; InvalidInput lists every problem.

    loc prefixes the error locations (e.g. ("base",) inside a sweep).
    """
    errors: list[tuple[Loc, str]] = []
    hyperparameters = _resolve_hyperparameters(run_in, errors, loc)
    dataset = _resolve_dataset(run_in, settings, errors, loc, hyperparameters)
    _check_eval_schedule(hyperparameters, dataset, settings, errors, loc)
    parameters = 0
    if not any(err_loc[len(loc):][:2] == ("hyperparameters", "model_options") for err_loc, _ in errors):
        parameters = _count_parameters(run_in.model, hyperparameters.get("model_options") or {}, settings,
                                       errors, loc)
    if errors:
        raise InvalidInput(errors)
    return ResolvedRun(run_in.model, dataset, hyperparameters, parameters)


def _resolve_hyperparameters(run_in: RunCreate, errors: list[tuple[Loc, str]], loc: Loc) -> dict[str, Any]:
    from ml.config import TrainConfig, field_errors

    overrides = run_in.hyperparameters.model_dump(exclude_none=True)
    merged = {**catalog.preset_hyperparameters(run_in.model), **overrides}
    for name, message in field_errors(TrainConfig(**merged)).items():
        errors.append(((*loc, "hyperparameters", name), message))
    return merged


CIFAR10_TRAIN_IMAGES = 50_000


def _check_eval_schedule(hyperparameters: dict[str, Any], dataset: dict[str, Any], settings: Settings,
                         errors: list[tuple[Loc, str]], loc: Loc) -> None:
    """At most MAX_EVALUATIONS_PER_RUN evaluations, and at least one training step between two.

    The step check uses an upper bound of the training split's size (CIFAR-10's 50,000 images or
    limit_train), so it never refuses a schedule that would work; the trainer itself also keeps at
    least one step between evaluations when the web cannot know the size.
    """
    every, epochs, batch = (hyperparameters.get(k) for k in ("eval_every", "epochs", "batch_size"))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (every, epochs, batch)):
        return  # field_errors already reported it
    where = (*loc, "hyperparameters", "eval_every")
    evaluations = epochs / every
    if evaluations > settings.MAX_EVALUATIONS_PER_RUN:
        errors.append((where, f"eval_every {every:g} over {epochs} epochs means {evaluations:.3g} evaluations; "
                              f"at most MAX_EVALUATIONS_PER_RUN={settings.MAX_EVALUATIONS_PER_RUN} are allowed"))
        return
    most_images = dataset.get("limit_train") or (CIFAR10_TRAIN_IMAGES if dataset.get("kind") == "cifar10" else None)
    if isinstance(most_images, int) and every * math.ceil(most_images / batch) < 1:
        errors.append((where, f"eval_every {every:g} epochs is less than one training step (at most "
                              f"{math.ceil(most_images / batch)} steps per epoch with batch_size {batch}); "
                              f"at least one training step must separate two evaluations"))


def _count_parameters(model: str, options: dict[str, Any], settings: Settings,
                      errors: list[tuple[Loc, str]], loc: Loc) -> int:
    """Count the model's parameters on the meta device; bad or too large model_options become field errors."""
    try:
        return catalog.checked_parameter_counts(model, options, settings=settings,
                                                loc=(*loc, "hyperparameters", "model_options"))[0]
    except InvalidInput as err:
        errors.extend(err.errors)
    return 0


def _resolve_dataset(run_in: RunCreate, settings: Settings, errors: list[tuple[Loc, str]], loc: Loc,
                     hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The dataset as stored on the run: confined absolute path, its listed name and content fingerprint.

    A request without a dataset trains on the default one (CIFAR-10 when present, else the sample).
    """
    from ml.config import DatasetSpec, field_errors

    if "dataset" in run_in.model_fields_set:
        dataset = run_in.dataset.model_dump()
    else:
        dataset = {**dataclasses.asdict(DatasetSpec()), "name": datasets.default_dataset(settings)}
    dataset["fingerprint"] = None
    field_problems = field_errors(DatasetSpec(**dataset))
    if field_problems:
        errors.extend(((*loc, "dataset", name), message) for name, message in field_problems.items())
        return dataset
    try:
        spec = datasets.resolve_dataset(dataset, settings=settings, loc=(*loc, "dataset"))
    except InvalidInput as err:
        errors.extend(err.errors)
        return dataset
    problems = datasets.check_before_queue(spec, hyperparameters, loc=(*loc, "dataset"))
    errors.extend(((*loc, *where) if where[0] == "hyperparameters" else where, message)
                  for where, message in problems)
    stored = dataclasses.asdict(spec)
    stored["name"] = datasets.dataset_name_of(spec, settings)
    stored["fingerprint"] = None if problems else datasets.fingerprint(spec)
    return stored


def run_request_of(run: Any) -> dict[str, Any]:
    """The RunCreate body that reproduces an existing run (for clones and sweeps over a run)."""
    dataset = {key: value for key, value in run.dataset.items() if key != "fingerprint"}
    return {
        "model": run.model,
        "dataset": dataset,
        "hyperparameters": dict(run.hyperparameters),
        "tags": list(run.tags),
        "notes": run.notes,
    }

