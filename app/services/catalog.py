"""The model catalogue: presets, parameter counts and layer tables from ml.models.

Counting parameters means building the model, which for resnet18 takes a
noticeable fraction of a second, so results are cached per (model, options).
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from typing import Any

from app.services.errors import InvalidInput, Loc, NotFound


def _spec(name: str) -> Any:
    from ml.config import ConfigError
    from ml.models import get_spec

    try:
        return get_spec(name)
    except ConfigError as err:
        raise NotFound(err.errors["model"]) from None


def _options_key(options: dict[str, Any] | None) -> str:
    return json.dumps(options or {}, sort_keys=True)


@lru_cache(maxsize=256)
def _build_counts(name: str, options_key: str) -> tuple[int, int]:
    import torch

    from ml.models import build_model, count_parameters

    # On the meta device, tensors have shapes but no memory: counting a huge model costs nothing.
    # No ImageNet weights needed to count; upsampling does not change the counts either.
    with torch.device("meta"):
        model = build_model(name, json.loads(options_key), pretrained=False)
    return count_parameters(model), count_parameters(model, trainable_only=True)


# More hidden layers than this is no image classifier of this study's kind, and slow to build.
MAX_HIDDEN_LAYERS = 16


def _size_problems(options: dict[str, Any], settings: Any) -> list[tuple[Loc, str]]:
    """Widths and upsampling past the settings' limits, checked before anything is built."""
    problems: list[tuple[Loc, str]] = []
    for key in ("filters", "hidden"):
        widths = options.get(key)
        if isinstance(widths, list) and any(isinstance(w, int) and w > settings.MAX_MODEL_WIDTH for w in widths):
            problems.append(((key,), f"each width must be at most {settings.MAX_MODEL_WIDTH} (MAX_MODEL_WIDTH)"))
    hidden = options.get("hidden")
    if isinstance(hidden, list) and len(hidden) > MAX_HIDDEN_LAYERS:
        problems.append((("hidden",), f"at most {MAX_HIDDEN_LAYERS} hidden layers"))
    upsample = options.get("upsample")
    if isinstance(upsample, int) and upsample > settings.MAX_UPSAMPLE:
        problems.append((("upsample",), f"must be at most {settings.MAX_UPSAMPLE} (MAX_UPSAMPLE)"))
    return problems


def checked_parameter_counts(name: str, options: dict[str, Any], *, settings: Any,
                             loc: Loc = ("model_options",)) -> tuple[int, int]:
    """parameter_counts within the settings' limits; InvalidInput (at `loc` + the option) otherwise.

    The model is counted on torch's meta device and must have at most MAX_MODEL_PARAMETERS.
    """
    from ml.config import ConfigError

    problems = _size_problems(options, settings)
    if problems:
        raise InvalidInput([((*loc, *where), message) for where, message in problems])
    try:
        total, trainable = parameter_counts(name, options)
    except ConfigError as err:
        raise InvalidInput([((*loc, field), message) for field, message in err.errors.items()]) from None
    except (TypeError, ValueError, OverflowError, RuntimeError) as err:  # e.g. text where a number belongs
        raise InvalidInput([(loc, f"invalid model options: {err}"[:300])]) from None
    if total > settings.MAX_MODEL_PARAMETERS:
        raise InvalidInput([(loc, f"the model has {total:,} parameters; at most {settings.MAX_MODEL_PARAMETERS:,} "
                                  "are allowed (MAX_MODEL_PARAMETERS)")])
    return total, trainable


def parameter_counts(name: str, options: dict[str, Any] | None = None) -> tuple[int, int]:
    """(all, trainable) parameter counts of model `name` built with `options` (ConfigError if invalid)."""
    _spec(name)
    return _build_counts(name, _options_key(options))


def parameter_counts_for_request(name: str, options: dict[str, Any], *, settings: Any) -> tuple[int, int]:
    """parameter_counts for a request body {"model_options": …}: bad options are a 422 at their field."""
    _spec(name)
    return checked_parameter_counts(name, options, settings=settings)


@lru_cache(maxsize=64)
def _build_layers(name: str, options_key: str) -> tuple[dict[str, Any], ...]:
    from ml.models import build_model
    from ml.visualize import layer_table  # written separately; imported only when needed

    return tuple(layer_table(build_model(name, json.loads(options_key), pretrained=False)))


def model_layers(name: str, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The per-layer parameter table of model `name` (404 with the valid names when unknown)."""
    _spec(name)
    return [dict(row) for row in _build_layers(name, _options_key(options))]


def preset_hyperparameters(name: str) -> dict[str, Any]:
    """Every TrainConfig option as model `name` starts with: TrainConfig defaults ← the preset."""
    from ml.config import TrainConfig

    return {**dataclasses.asdict(TrainConfig()), **_spec(name).defaults}


def list_models() -> list[dict[str, Any]]:
    from ml.models import MODELS

    models = []
    for name, spec in MODELS.items():
        total, trainable = parameter_counts(name)
        models.append({
            "name": name, "title": spec.title, "description": spec.description,
            "parameters": total, "trainable_parameters": trainable,
            "defaults": preset_hyperparameters(name),
        })
    return models
