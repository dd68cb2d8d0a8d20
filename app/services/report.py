"""The CIFAR-10 study reproduced: each preset's latest succeeded run, and its mean ± std over seeds,
beside the study's numbers.

The reference numbers live here, and only here, each table with its source.
Accuracies are fractions (as the runs store them); the page shows percentages
and the differences in percentage points.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from app.models import Run, RunStatus
from app.services.stats import Summary, summarize

STUDY_PRESETS = ("task1", "net1", "net2", "resnet18")
REPORT_METRICS = ("train/acc", "val/acc", "test/acc", "train/loss", "val/loss")


@dataclass(frozen=True)
class ReferenceSet:
    """One column of reference numbers: where they come from, and per preset its metrics and notes."""

    key: str
    title: str
    short: str  # a column header
    source: str
    metrics: dict[str, dict[str, float]]
    notes: dict[str, str] = field(default_factory=dict)


# (a) The study's own results, measured on the original CIFAR-10 images (the study's report,
# final figures of each network; the study gives no losses for task 1 and no ResNet18 numbers).
STUDY_ORIGINAL = ReferenceSet(
    key="study",
    title="Study (original images)",
    short="study",
    source="The study's report: its own final figures, on the original CIFAR-10 images.",
    metrics={
        "task1": {"train/acc": 0.9198, "val/acc": 0.7508, "test/acc": 0.7397},
        "net1": {"train/loss": 0.5447, "val/loss": 0.6389, "train/acc": 0.8065, "val/acc": 0.7776,
                 "test/acc": 0.7716},
        "net2": {"train/loss": 0.3819, "val/loss": 0.5427, "train/acc": 0.8685, "val/acc": 0.8148,
                 "test/acc": 0.8019},
    },
)

# (b) What the study's recipe reaches on the JPEG re-encoding of CIFAR-10 that these machines have:
# docs/benchmarks.md, "JPEG reference" (CPU, seed 0, 45k/5k/10k split, evaluation every half
# epoch), copied there from the dataset's notes. Judge fidelity on the JPEG set against these.
RECIPE_ON_JPEG = ReferenceSet(
    key="jpeg",
    title="Recipe on the JPEG set",
    short="JPEG recipe",
    source="docs/benchmarks.md, \"JPEG reference\": an independent run of the study's protocol on the JPEG "
           "re-encoding (CPU, seed 0, 45k/5k/10k split).",
    metrics={
        "task1": {"train/acc": 0.808, "val/acc": 0.708, "test/acc": 0.704, "train/loss": 0.551,
                  "val/loss": 0.850},
        "net1": {"train/acc": 0.780, "val/acc": 0.752, "test/acc": 0.749, "train/loss": 0.618,
                 "val/loss": 0.719},
        "net2": {"train/acc": 0.843, "val/acc": 0.783, "test/acc": 0.782, "train/loss": 0.454,
                 "val/loss": 0.612},
    },
    notes={
        "task1": "8 epochs (early stop); single task1 runs vary by several points.",
        "net1": "10 epochs, measured with Xavier on all layers (the preset's Linear-only init may land higher).",
        "net2": "10 epochs, Xavier on Linear layers only, as in the study's code.",
    },
)

REFERENCE_SETS = (STUDY_ORIGINAL, RECIPE_ON_JPEG)


@dataclass(frozen=True)
class Comparison:
    """One reference value and how far the run is from it (None where either is missing)."""

    reference: float | None
    difference: float | None  # run − reference: fraction for accuracies, plain for losses


@dataclass(frozen=True)
class MetricRow:
    metric: str
    value: float | None  # the run's last evaluation
    comparisons: dict[str, Comparison]  # ReferenceSet.key → comparison

    @property
    def is_accuracy(self) -> bool:
        return self.metric.endswith("/acc")


@dataclass(frozen=True)
class PresetResult:
    preset: str
    title: str  # the model registry's title, e.g. "Net 1: deeper CNN, batch norm, dropout 0.5"
    run: Run | None
    rows: list[MetricRow]
    notes: list[str]


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def compare_metrics(preset: str, final_metrics: dict[str, Any]) -> list[MetricRow]:
    """The run's final metrics beside every reference set's, with run − reference."""
    rows = []
    for metric in REPORT_METRICS:
        value = _finite(final_metrics.get(metric))
        comparisons = {}
        for reference_set in REFERENCE_SETS:
            reference = reference_set.metrics.get(preset, {}).get(metric)
            difference = value - reference if value is not None and reference is not None else None
            comparisons[reference_set.key] = Comparison(reference, difference)
        rows.append(MetricRow(metric, value, comparisons))
    return rows


def latest_succeeded_run(session: Session, preset: str) -> Run | None:
    """The preset's most recently finished succeeded run."""
    return session.scalars(
        select(Run).where(Run.model == preset, Run.status == RunStatus.succeeded)
        .order_by(Run.finished_at.desc().nulls_last(), Run.id.desc()).limit(1)
    ).first()


def study_results(session: Session) -> list[PresetResult]:
    """One entry per study preset, in the study's order, with or without a run."""
    from ml.models import get_spec  # imports torch: only when a report is asked for

    results = []
    for preset in STUDY_PRESETS:
        run = latest_succeeded_run(session, preset)
        notes = [reference_set.notes[preset] for reference_set in REFERENCE_SETS if preset in reference_set.notes]
        rows = compare_metrics(preset, run.final_metrics if run else {})
        results.append(PresetResult(preset, get_spec(preset).title, run, rows, notes))
    return results


def showcase_run(results: list[PresetResult]) -> Run | None:
    """Whose checkpoint the report visualises: the resnet18 run, else the highest test accuracy."""
    runs = [result.run for result in results if result.run is not None and result.run.checkpoint_path]
    resnet = [run for run in runs if run.model == "resnet18"]
    if resnet:
        return resnet[0]
    scored = [run for run in runs if _finite(run.final_metrics.get("test/acc")) is not None]
    return max(scored, key=lambda run: run.final_metrics["test/acc"], default=runs[0] if runs else None)


# ------------------------------------------------------------- over seeds ---
# A single run varies by several points from seed to seed, so the report also shows each preset's
# mean ± std over every run that follows the preset's recipe. What a run changes beyond its seed
# makes it a different experiment: it is listed as not comparable, with the reasons.

# Options that change neither what is trained nor on what: the seed, how often progress is logged,
# and bf16 autocast (on by default on CUDA, where the study's presets run).
RECIPE_NEUTRAL = frozenset({"seed", "log_every", "amp"})
MAX_SEED_RUNS = 1000  # the most recent succeeded preset runs considered
MAX_NOT_COMPARABLE_SHOWN = 50


@dataclass(frozen=True)
class SeedResult:
    """One preset's comparable runs (one per seed) and their mean ± std per metric."""

    preset: str
    runs: list[Run]
    rows: list[MetricRow]  # value = the mean; comparisons = mean − reference
    summaries: dict[str, Summary]  # metric → mean, std, n


@dataclass(frozen=True)
class NotComparable:
    run: Run
    reasons: list[str]


@dataclass(frozen=True)
class SeedStudy:
    dataset: str | None  # the data set the means are over
    datasets: list[str]  # every data set with runs that follow a recipe, most recent first
    results: list[SeedResult]
    not_comparable: list[NotComparable]  # the first MAX_NOT_COMPARABLE_SHOWN
    not_comparable_total: int


def dataset_label(dataset: dict[str, Any]) -> str:
    """The dataset's listed name ("cifar10-sample", an upload), else "cifar10" or the kind and path: what
    tells two data sets apart (limits and augmentation aside)."""
    if dataset.get("name"):
        return str(dataset["name"])
    kind = str(dataset.get("kind") or "cifar10")
    return f"{kind} {dataset['path']}" if dataset.get("path") else kind


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def recipe_mismatches(run: Run, preset_hyperparameters: dict[str, Any]) -> list[str]:
    """Why `run` does not follow its preset's recipe: a subset, augmentation, or a changed hyperparameter.

    An option the run does not record (a row older than the option) counts as the preset's.
    """
    reasons = []
    if run.dataset.get("limit_train"):
        reasons.append(f"trained on at most {run.dataset['limit_train']:,} images, not the full training set")
    if run.dataset.get("limit_test"):
        reasons.append(f"tested on at most {run.dataset['limit_test']:,} images, not the full test set")
    if run.dataset.get("augment"):
        reasons.append("augmented training data (the recipe has none)")
    for key, expected in preset_hyperparameters.items():
        actual = run.hyperparameters.get(key, expected)
        if key not in RECIPE_NEUTRAL and not _same_value(actual, expected):
            reasons.append(f"{key} {json.dumps(actual)}, the preset's is {json.dumps(expected)}")
    return reasons


def seed_study(session: Session, dataset: str | None = None) -> SeedStudy:
    """Each study preset's mean ± std over its comparable succeeded runs on one data set.

    dataset: a dataset_label; by default the data set of the latest run that follows a recipe.
    Comparable: the preset's recipe (recipe_mismatches finds nothing), the chosen data set, and a
    seed not counted yet (a rerun of the same seed is no new sample; the latest one counts).
    """
    from app.services.catalog import preset_hyperparameters

    recent = list(session.scalars(
        select(Run).where(Run.model.in_(STUDY_PRESETS), Run.status == RunStatus.succeeded)
        .order_by(Run.finished_at.desc().nulls_last(), Run.id.desc()).limit(MAX_SEED_RUNS)
    ).all())
    recipes = {preset: preset_hyperparameters(preset) for preset in STUDY_PRESETS}
    mismatches = {run.id: recipe_mismatches(run, recipes[run.model]) for run in recent}
    datasets = list(dict.fromkeys(dataset_label(run.dataset) for run in recent if not mismatches[run.id]))
    chosen = dataset if dataset is not None else (datasets[0] if datasets else None)

    counted: dict[str, dict[Any, Run]] = {preset: {} for preset in STUDY_PRESETS}
    not_comparable = []
    for run in recent:
        reasons = list(mismatches[run.id])
        if chosen is not None and dataset_label(run.dataset) != chosen:
            reasons.insert(0, f"another data set: {dataset_label(run.dataset)}")
        seed = run.hyperparameters.get("seed", 0)
        earlier = counted[run.model].get(seed)
        if not reasons and earlier is not None:
            reasons.append(f"seed {seed} is already counted (run #{earlier.id}, more recent)")
        if reasons:
            not_comparable.append(NotComparable(run, reasons))
        else:
            counted[run.model][seed] = run

    results = []
    for preset in STUDY_PRESETS:
        runs = sorted(counted[preset].values(), key=lambda run: run.hyperparameters.get("seed", 0))
        summaries = {metric: summarize(run.final_metrics.get(metric) for run in runs) for metric in REPORT_METRICS}
        rows = compare_metrics(preset, {metric: summary.mean for metric, summary in summaries.items()})
        results.append(SeedResult(preset, runs, rows, summaries))
    return SeedStudy(chosen, datasets, results, not_comparable[:MAX_NOT_COMPARABLE_SHOWN], len(not_comparable))
