"""Pydantic models built from the config dataclasses of ml/config.py.

The dataclass field metadata (gt/ge/lt/le/choices/increasing, help) is the one
source of the constraints: the CLI checks it with `ml.config.field_errors`, and
the REST API gets the same rules as pydantic field constraints, so a bad value
is a field-level 422 with its location (e.g. body → hyperparameters → lr).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

NUMERIC_CONSTRAINTS = ("gt", "ge", "lt", "le")


def _strictly_increasing(values: list[Any]) -> list[Any]:
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"must be a strictly increasing list (got {values})")
    return values


def _is_optional(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return origin in (Union, types.UnionType) and type(None) in typing.get_args(annotation)


def _without_none(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if len(args) == 1 else Union[tuple(args)]


def _constrained_type(annotation: Any, meta: dict[str, Any]) -> Any:
    """`annotation` with the metadata's constraints attached (to the items, for lists)."""
    if _is_optional(annotation):
        return _constrained_type(_without_none(annotation), meta) | None
    if "choices" in meta:
        return Literal[tuple(meta["choices"])]
    bounds = {key: meta[key] for key in NUMERIC_CONSTRAINTS if key in meta}
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        item_type = Annotated[item, Field(**bounds)] if bounds else item
        list_type = list[item_type]
        if meta.get("increasing"):
            return Annotated[list_type, AfterValidator(_strictly_increasing)]
        return list_type
    return Annotated[annotation, Field(**bounds)] if bounds else annotation


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...


def model_from_dataclass(cls: type, model_name: str, *, all_optional: bool = False,
                         description: str | None = None) -> type[BaseModel]:
    """A pydantic model with one field per dataclass field, constrained by its metadata.

    all_optional: every field defaults to None, meaning "not given" (used for
    hyperparameter overrides that fall back to the model's preset).
    Unknown keys are rejected (extra="forbid"), each at its own location.
    """
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        annotation = _constrained_type(hints[f.name], meta)
        if all_optional:
            annotation = annotation | None if not _is_optional(annotation) else annotation
            default: Any = None
            examples = [_default_of(f)]
        else:
            default = _default_of(f)
            examples = None
        fields[f.name] = (annotation, Field(default=default, description=meta.get("help"), examples=examples))
    return create_model(
        model_name,
        __config__=ConfigDict(extra="forbid"),
        __doc__=description or cls.__doc__,
        **fields,
    )
