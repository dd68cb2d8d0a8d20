"""The launch form (/runs/new), generated from ml/config.py so it never drifts from the trainer.

Each TrainConfig and DatasetSpec field becomes one input, with its help text,
constraints and choices from the dataclass metadata. A field added to
TrainConfig appears here on its own (in the "Other" section until it is placed
in one). The form posts JSON to the REST API from static/launch.js.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.api.deps import SessionDep, SettingsDep
from app.core.config import Settings
from app.core.security import parse_id
from app.pages.common import get_run_or_404, not_found
from app.pages.templating import render
from app.services import catalog, datasets
from app.services.run_config import run_request_of

router = APIRouter(tags=["pages"], include_in_schema=False)

# Where each TrainConfig field is shown; fields not listed go to "Other".
HYPERPARAMETER_SECTIONS: dict[str, tuple[str, ...]] = {
    "Optimiser": ("optimizer", "lr", "momentum", "weight_decay", "nesterov"),
    "Schedule": ("scheduler", "gamma", "milestones"),
    "Training": ("epochs", "batch_size", "drop_last", "early_stop_count", "eval_every", "protocol", "val_fraction",
                 "seed", "log_every"),
    "Model": ("pretrained", "amp", "compile", "cuda_graphs", "model_options"),
}
SWEEPABLE_KINDS = ("int", "float", "choice", "bool")
CONSTRAINT_SYMBOLS = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))


@dataclass(frozen=True)
class FormField:
    """One input of the form, described by a config dataclass field."""

    group: str  # "hyperparameters" or "dataset": the request body's key
    name: str
    kind: str  # int, float, bool, choice, text, int_list, json
    optional: bool  # blank means null
    help: str
    default: Any
    choices: tuple[str, ...] = ()
    minimum: float | None = None  # HTML min/max: inclusive bounds only
    maximum: float | None = None
    constraints: str = ""  # e.g. "> 0, ≤ 10"

    @property
    def loc(self) -> str:
        """Where the API's 422 errors point: loc ["body", group, name] → "group.name"."""
        return f"{self.group}.{self.name}"

    @property
    def input_id(self) -> str:
        return f"f-{self.group}-{self.name}"

    @property
    def sweepable(self) -> bool:
        return self.group == "hyperparameters" and self.kind in SWEEPABLE_KINDS

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")

    def text_value(self, value: Any) -> str:
        """The value as the input's text (numbers plain, lists comma-separated, objects as JSON)."""
        if value is None:
            return ""
        if self.kind == "int_list":
            return ", ".join(str(item) for item in value)
        if self.kind == "json":
            return json.dumps(value) if value else ""
        if isinstance(value, float):
            return repr(value)  # shortest round-tripping form: 0.0005, 1e-05
        return str(value)


def _kind_of(annotation: Any, meta: dict[str, Any]) -> tuple[str, bool]:
    """(input kind, optional) of a dataclass field's type."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        annotation = next(arg for arg in args if arg is not type(None))
    if "choices" in meta:
        return "choice", optional
    if typing.get_origin(annotation) is list:
        return "int_list", optional
    if typing.get_origin(annotation) is dict or annotation is dict:
        return "json", optional
    names = {bool: "bool", int: "int", float: "float", str: "text"}
    return names.get(annotation, "text"), optional


def _constraint_text(meta: dict[str, Any]) -> str:
    parts = [f"{symbol} {meta[key]}" for key, symbol in CONSTRAINT_SYMBOLS if key in meta]
    if meta.get("increasing"):
        parts.append("increasing")
    return ", ".join(parts)


def form_fields(cls: type, group: str) -> list[FormField]:
    """One FormField per field of the config dataclass `cls`, in its order."""
    hints = typing.get_type_hints(cls)
    instance = cls()
    fields = []
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        kind, optional = _kind_of(hints[f.name], meta)
        fields.append(FormField(
            group=group, name=f.name, kind=kind, optional=optional, help=meta.get("help", ""),
            default=getattr(instance, f.name), choices=tuple(meta.get("choices", ())),
            minimum=meta.get("ge"), maximum=meta.get("le"), constraints=_constraint_text(meta),
        ))
    return fields


def hyperparameter_sections() -> list[tuple[str, list[FormField]]]:
    from ml.config import TrainConfig

    fields = {field.name: field for field in form_fields(TrainConfig, "hyperparameters")}
    sections = [(title, [fields.pop(name) for name in names if name in fields])
                for title, names in HYPERPARAMETER_SECTIONS.items()]
    if fields:
        sections.append(("Other", list(fields.values())))
    return [(title, section) for title, section in sections if section]


# Recorded by the server, never typed in.
HIDDEN_DATASET_FIELDS = ("fingerprint",)


def dataset_fields(dataset_names: Sequence[str] = ()) -> list[FormField]:
    """The dataset inputs: `name` first, as a pick from the datasets list ("" = by kind and path)."""
    from ml.config import DatasetSpec

    fields = {f.name: f for f in form_fields(DatasetSpec, "dataset") if f.name not in HIDDEN_DATASET_FIELDS}
    name = dataclasses.replace(fields.pop("name"), kind="choice", choices=("", *dataset_names))
    return [name, *fields.values()]


@dataclass(frozen=True)
class FormStart:
    """What the form opens with: a preset's defaults, or a copy of an existing run."""

    model: str
    hyperparameters: dict[str, Any]
    dataset: dict[str, Any]
    name: str = ""
    tags: tuple[str, ...] = ()
    notes: str = ""
    clone_of: Any = None  # the Run being cloned


def form_start(*, model: str | None, clone_of: Any, default_dataset: str | None = None) -> FormStart:
    from ml.config import DatasetSpec
    from ml.models import MODELS

    dataset_defaults = {**dataclasses.asdict(DatasetSpec()), "name": default_dataset}
    if clone_of is not None:
        request = run_request_of(clone_of)
        return FormStart(
            model=request["model"],
            hyperparameters={**catalog.preset_hyperparameters(request["model"]), **request["hyperparameters"]},
            dataset={**dataset_defaults, **request["dataset"]},
            tags=tuple(request["tags"]), notes=request["notes"], clone_of=clone_of,
        )
    model = model if model in MODELS else next(iter(MODELS))
    hyperparameters = catalog.preset_hyperparameters(model)
    if default_dataset == datasets.SAMPLE_NAME:
        # A first run on the sample should finish in about a minute on a 2-core CPU.
        hyperparameters["epochs"] = min(hyperparameters["epochs"], datasets.SAMPLE_FORM_EPOCHS)
    return FormStart(model=model, hyperparameters=hyperparameters, dataset=dataset_defaults)


def launch_page_context(start: FormStart, max_sweep_runs: int, settings: Settings | None = None) -> dict[str, Any]:
    models = catalog.list_models()
    listed = datasets.list_datasets(settings=settings) if settings is not None else []
    usable = [info.name for info in listed if info.status in ("ready", "downloadable")]
    return {
        "start": start,
        "models": models,
        "sections": hyperparameter_sections(),
        "dataset_fields": dataset_fields(usable),
        "cifar10_missing": any(info.name == datasets.CIFAR10_NAME and info.status != "ready" for info in listed),
        "datasets_dir": settings.DATASETS_DIR if settings is not None else None,
        # For the JS: presets (filled in when the model changes) and how to read each input.
        "form_data": {
            "models": {m["name"]: {"defaults": m["defaults"], "parameters": m["parameters"],
                                   "description": m["description"],
                                   "trainable_parameters": m["trainable_parameters"]} for m in models},
            "clone_of": start.clone_of.id if start.clone_of is not None else None,
            "max_sweep_runs": max_sweep_runs,
        },
    }


@router.get("/runs/new", response_class=HTMLResponse)
def launch_page(request: Request, session: SessionDep, settings: SettingsDep,
                clone: str | None = None, model: str | None = None) -> HTMLResponse:
    clone_of = None
    if clone:
        clone_id = parse_id(clone)
        if clone_id is None:
            raise not_found(f"there is no run {clone[:40]!r} to clone")
        clone_of = get_run_or_404(session, clone_id)
    start = form_start(model=model, clone_of=clone_of, default_dataset=datasets.default_dataset(settings))
    return render(request, "launch.html", launch_page_context(start, settings.MAX_SWEEP_RUNS, settings),
                  active="launch")
