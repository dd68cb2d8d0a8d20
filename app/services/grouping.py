"""Compared runs grouped by one setting (typically the seeds of one configuration), with the
mean ± std of each group's final metrics.

GET /api/compare?group_by= (through runs.compare_runs) and the compare page both group here,
so the API and the page agree on the groups, their order and their numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.models import Run
from app.services import stats
from app.services.errors import InvalidInput

# The final metrics compare lists per run, and summarises per group.
TABLE_METRICS = ("train/loss", "val/loss", "train/acc", "val/acc", "test/acc")


def setting_of(run: Run, key: str) -> Any:
    """A value by the keys compare_runs uses: "model", "dataset.<key>" or a hyperparameter."""
    if key == "model":
        return run.model
    if key.startswith("dataset."):
        return run.dataset.get(key.removeprefix("dataset."))
    return run.hyperparameters.get(key)


def grouping_keys(differing: Sequence[str]) -> list[str]:
    """What compared runs can be grouped by: the model, and every setting that differs between them."""
    return ["model", *(key for key in differing if key != "model")]


def check_group_by(group_by: str | None, differing: Sequence[str]) -> str | None:
    """The setting to group by, or None for no grouping.

    Empty means none too: the page's "no grouping" choice sends group_by=. Anything but a
    grouping key is an InvalidInput on group_by that lists the valid ones.
    """
    if not group_by:
        return None
    keys = grouping_keys(differing)
    if group_by not in keys:
        raise InvalidInput([(("group_by",), f"must be one of: {', '.join(keys)}")])
    return group_by


@dataclass(frozen=True)
class RunGroup:
    """Runs that share one value of the grouping setting, and their final metrics' mean ± std."""

    value: Any
    runs: list[Run]
    summaries: dict[str, stats.Summary]  # by TABLE_METRICS name

    @property
    def run_ids(self) -> list[int]:
        return [run.id for run in self.runs]  # type: ignore[misc]  (loaded runs always have an id)

    @property
    def n(self) -> int:
        return len(self.runs)


def _group_key(value: Any) -> str:
    # Values can be lists or dicts (milestones, model_options): compare them by their JSON.
    return json.dumps(value, sort_keys=True, default=str)


def group_runs(runs: Sequence[Run], key: str) -> list[RunGroup]:
    """Groups by setting `key`, in the order their first run is listed."""
    members: dict[str, list[Run]] = {}
    for run in runs:
        members.setdefault(_group_key(setting_of(run, key)), []).append(run)
    return [RunGroup(setting_of(group[0], key), group,
                     {metric: stats.summarize(run.final_metrics.get(metric) for run in group)
                      for metric in TABLE_METRICS})
            for group in members.values()]
