"""Training and dataset configuration: plain dataclasses with their own validation.

Each field carries its constraints as `metadata`, so that one source of truth
serves the CLI (`validate_config`) and the REST API, which builds its pydantic
models from the same metadata. `ml/` must stay importable with torch,
torchvision, numpy and Pillow alone, so no pydantic here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable


class ConfigError(ValueError):
    """An invalid configuration. `errors` maps a field name to its message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{name}: {msg}" for name, msg in self.errors.items()))


def _spec(help: str, **constraints: Any) -> dict[str, Any]:
    """Field metadata: a help text plus constraints (gt, ge, le, lt, choices, increasing)."""
    return {"help": help, **constraints}


OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("none", "exponential", "multistep", "cosine")
PROTOCOLS = ("full", "running")
DATASET_KINDS = ("cifar10", "imagefolder")


@dataclass
class TrainConfig:
    """Every trainer option. Presets override the defaults (see ml.models)."""

    optimizer: str = field(default="sgd", metadata=_spec("Optimiser", choices=OPTIMIZERS))
    lr: float = field(default=0.05, metadata=_spec("Learning rate", gt=0, le=10))
    momentum: float = field(default=0.0, metadata=_spec("SGD momentum", ge=0, lt=1))
    weight_decay: float = field(default=0.0, metadata=_spec("L2 weight decay", ge=0, lt=1))
    nesterov: bool = field(default=False, metadata=_spec("Nesterov momentum (SGD, needs momentum > 0)"))
    batch_size: int = field(default=64, metadata=_spec("Batch size", ge=1, le=4096))
    epochs: int = field(default=10, metadata=_spec("Maximum number of epochs", ge=1, le=1000))
    early_stop_count: int = field(
        default=4,
        metadata=_spec("Stop when the last N validation losses are non-decreasing (0 = never)", ge=0, le=1000),
    )
    scheduler: str = field(default="none", metadata=_spec("Learning-rate schedule, stepped per epoch", choices=SCHEDULERS))
    gamma: float = field(default=0.95, metadata=_spec("Decay factor of exponential/multistep", gt=0, le=1))
    milestones: list[int] = field(
        default_factory=list, metadata=_spec("Epochs at which multistep decays", increasing=True, ge=1)
    )
    drop_last: bool = field(
        default=True, metadata=_spec("Skip each epoch's last incomplete training batch (a tiny batch at a high lr "
                                     "throws the model off right before the epoch-end evaluation)"))
    eval_every: float = field(default=0.5, metadata=_spec("Evaluate every this many epochs", gt=0, le=100))
    protocol: str = field(
        default="full",
        metadata=_spec("full: train metrics from a pass over the train set; running: averages since the last evaluation",
                       choices=PROTOCOLS),
    )
    seed: int = field(default=0, metadata=_spec("Random seed (init, split, shuffling)", ge=0, le=2**31 - 1))
    val_fraction: float = field(default=0.1, metadata=_spec("Fraction of train held out for validation", gt=0, lt=1))
    log_every: int = field(default=50, metadata=_spec("Report loss, lr and images/s every N steps", ge=1, le=100000))
    amp: bool = field(default=True, metadata=_spec(
        "Mixed precision where the device computes it natively: bf16 (fp16 + loss scaling on pre-Ampere GPUs, "
        "bf16 on CPUs with AMX or AVX512-BF16) with channels_last; off: fp32"))
    pretrained: bool = field(default=True, metadata=_spec("resnet18: start from ImageNet weights"))
    model_options: dict[str, Any] = field(
        default_factory=dict, metadata=_spec("Extra model options (the custom builder's config)")
    )
    compile: bool = field(default=False, metadata=_spec(
        "torch.compile the model (a minute or more of compiling first; see docs/benchmarks.md for when it pays)"))
    cuda_graphs: bool = field(default=True, metadata=_spec(
        "On a GPU, capture the training step (SGD, bf16 or fp32) once as a CUDA graph and replay it: "
        "one launch a step instead of hundreds; no effect on CPUs"))


@dataclass
class DatasetSpec:
    """Which data to train on."""

    kind: str = field(default="cifar10", metadata=_spec("Dataset kind", choices=DATASET_KINDS))
    path: str | None = field(default=None, metadata=_spec("cifar10: data dir; imagefolder: root with train/ and test/"))
    limit_train: int | None = field(default=None, metadata=_spec("Use at most N training images (before the val split)", ge=10))
    limit_test: int | None = field(default=None, metadata=_spec("Use at most N test images", ge=1))
    augment: bool = field(default=False, metadata=_spec("Random crop (4 px padding) and horizontal flip"))
    download: bool = field(default=False, metadata=_spec("cifar10: download when missing"))
    name: str | None = field(default=None, metadata=_spec(
        "A dataset by name, as listed by GET /api/datasets (e.g. cifar10-sample); sets kind and path"))
    fingerprint: str | None = field(default=None, metadata=_spec(
        "Content fingerprint of the data, recorded at launch (a value sent is replaced)"))


_TYPE_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "int": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "int | None": ("a whole number or null", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool))),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "str | None": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "list[int]": ("a list of whole numbers",
                  lambda v: isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)),
    "dict[str, Any]": ("an object", lambda v: isinstance(v, dict)),
}


def _check_type(type_name: str, value: Any) -> str | None:
    expected, check = _TYPE_CHECKS.get(type_name, ("", lambda v: True))
    return None if check(value) else f"must be {expected} (got {value!r})"


def _check_value(name: str, value: Any, meta: dict[str, Any]) -> str | None:
    """The message for one field that breaks its constraints, else None."""
    if "choices" in meta and value not in meta["choices"]:
        return f"must be one of {', '.join(map(str, meta['choices']))} (got {value!r})"
    if value is None or isinstance(value, (bool, str, dict)):
        return None
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)):
            return f"must be a number (got {v!r})"
        if "gt" in meta and not v > meta["gt"]:
            return f"must be greater than {meta['gt']} (got {v})"
        if "ge" in meta and not v >= meta["ge"]:
            return f"must be at least {meta['ge']} (got {v})"
        if "lt" in meta and not v < meta["lt"]:
            return f"must be less than {meta['lt']} (got {v})"
        if "le" in meta and not v <= meta["le"]:
            return f"must be at most {meta['le']} (got {v})"
    if meta.get("increasing") and any(b <= a for a, b in zip(values, values[1:])):
        return f"must be a strictly increasing list (got {values})"
    return None


def field_errors(obj: Any) -> dict[str, str]:
    """Field-level messages for every constraint that `obj` (a config dataclass) breaks."""
    errors = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        message = _check_type(str(f.type), value) or _check_value(f.name, value, dict(f.metadata))
        if message:
            errors[f.name] = message
    if isinstance(obj, TrainConfig) and obj.nesterov and (obj.optimizer != "sgd" or obj.momentum <= 0):
        errors["nesterov"] = "needs optimizer 'sgd' with momentum > 0"
    if isinstance(obj, DatasetSpec) and obj.kind == "imagefolder" and not obj.path and not obj.name:
        errors["path"] = "an imagefolder dataset needs a path"
    return errors


def validate(obj: Any) -> Any:
    """Raise ConfigError listing every bad field; return `obj` when it is valid."""
    errors = field_errors(obj)
    if errors:
        raise ConfigError(errors)
    return obj


def from_dict(cls: type, data: dict[str, Any] | None) -> Any:
    """Build a config dataclass from a dict, rejecting unknown keys by name."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError({k: f"unknown option; valid options: {', '.join(sorted(names))}" for k in unknown})
    return validate(cls(**data))


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(obj)
