"""Tables and API shapes, in the families of the full-stack FastAPI template.

Run: RunBase (shared fields) → RunCreate (POST body), Run (table), RunPublic,
RunsPublic, RunUpdate (PATCH body). MetricPoint, RunEvent and WorkerHeartbeat
are tables the worker writes. The schema itself is defined by the Alembic
migrations in app/migrations; a test checks that these classes match them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, field_validator, model_validator
from sqlalchemy import JSON, Column, Float, ForeignKey, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.dataclass_models import model_from_dataclass
from app.core.types import BigId, UTCDateTime
from ml.config import DatasetSpec, TrainConfig

MAX_TAGS = 32
MAX_TAG_LENGTH = 64


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset({RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled})

# Request models generated from ml/config.py, so the constraints have one source.
HyperparametersIn = model_from_dataclass(
    TrainConfig, "HyperparametersIn", all_optional=True,
    description="Training options; each one left out takes the model's preset, then TrainConfig's default.",
)
DatasetIn = model_from_dataclass(DatasetSpec, "DatasetIn", description="Which data to train on.")


def _clean_tags(tags: list[str] | None) -> list[str] | None:
    """Stripped, non-empty, de-duplicated tags in their given order."""
    if tags is None:
        return None
    cleaned = list(dict.fromkeys(tag.strip() for tag in tags if tag.strip()))
    if len(cleaned) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags")
    too_long = [tag for tag in cleaned if len(tag) > MAX_TAG_LENGTH]
    if too_long:
        raise ValueError(f"tags are at most {MAX_TAG_LENGTH} characters: {too_long[0][:20]}…")
    return cleaned


# ----------------------------------------------------------------------- runs ---

class RunBase(SQLModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    tags: list[str] = Field(default_factory=list, sa_type=JSON, nullable=False)
    notes: str = Field(default="", max_length=20_000, sa_type=Text, nullable=False)

    @field_validator("tags")
    @classmethod
    def _validate_tags(cls, tags: list[str]) -> list[str]:
        return _clean_tags(tags) or []


class RunCreate(RunBase):
    """POST /api/runs: what to train. Hyperparameters left out take the model's preset."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    model: str = Field(description="A registered model name (GET /api/models)")
    dataset: DatasetIn = Field(default_factory=DatasetIn)  # type: ignore[valid-type]
    hyperparameters: HyperparametersIn = Field(default_factory=HyperparametersIn)  # type: ignore[valid-type]

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from ml.config import ConfigError
        from ml.models import get_spec

        try:
            get_spec(name)
        except ConfigError as err:
            raise ValueError(err.errors["model"]) from None
        return name


class Run(RunBase, table=True):
    __tablename__ = "run"
    __table_args__ = (
        Index("ix_run_best_val_acc", "best_val_acc"),
        Index("ix_run_test_acc", "test_acc"),
        Index("ix_run_duration_s", "duration_s"),
        {"sqlite_autoincrement": True},  # ids are never reused (migration 0003_worker)
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, index=True)
    model: str = Field(max_length=64, index=True)
    dataset: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    # Fully resolved: TrainConfig defaults ← the model's preset ← the request's overrides.
    hyperparameters: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    parameters: int = Field(default=0)
    status: str = Field(default=RunStatus.queued, max_length=16, index=True)

    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    heartbeat_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    duration_s: float | None = None  # finished_at - started_at, kept for sorting
    worker_host: str | None = Field(default=None, max_length=255)
    cancel_requested: bool = False

    epoch: float = 0.0
    step: int = 0
    total_steps: int | None = None
    images_per_s: float | None = None

    best_metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    final_metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    # Copies of best_metrics["val/acc"] and final_metrics["test/acc"], indexed for sorting.
    best_val_acc: float | None = None
    test_acc: float | None = None
    error: str | None = Field(default=None, sa_type=Text)

    cloned_from: int | None = Field(default=None, foreign_key="run.id", ondelete="SET NULL")
    checkpoint_path: str | None = Field(default=None, sa_type=Text)
    resumed_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Counts edits (PATCH): a PATCH that names an older version is refused with 409.
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    worker_pid: int | None = None  # with worker_host: the worker process that claimed it (/workers)
    # What the worker trained at and on (recorded when training starts; None/{} before).
    precision: str | None = Field(default=None, max_length=200)
    device_info: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False,
                                        sa_column_kwargs={"server_default": "{}"})


class RunPublic(RunBase):
    id: int
    name: str
    model: str
    dataset: dict[str, Any]
    hyperparameters: dict[str, Any]
    parameters: int
    status: RunStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    duration_s: float | None
    worker_host: str | None
    cancel_requested: bool
    epoch: float
    step: int
    total_steps: int | None
    images_per_s: float | None
    best_metrics: dict[str, Any]
    final_metrics: dict[str, Any]
    error: str | None
    cloned_from: int | None
    checkpoint_path: str | None
    resumed_count: int
    version: int = Field(description="Edit counter; send it back in PATCH to refuse overwriting a newer edit")
    worker_pid: int | None = None
    precision: str | None = None
    device_info: dict[str, Any] = {}


class RunsPublic(SQLModel):
    data: list[RunPublic]
    count: int


class RunUpdate(SQLModel):
    """PATCH /api/runs/{id}: only the descriptive fields can change."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    name: str | None = Field(default=None, min_length=1, max_length=200)
    tags: list[str] | None = None
    notes: str | None = Field(default=None, max_length=20_000)
    version: int | None = Field(default=None, ge=1, le=2**31 - 1,
                                description="The run's version this edit is based on; 409 if the run changed since")

    @field_validator("tags")
    @classmethod
    def _validate_tags(cls, tags: list[str] | None) -> list[str] | None:
        return _clean_tags(tags)


class RunClone(SQLModel):
    """POST /api/runs/{id}/clone: overrides merged into the original run's settings.

    hyperparameters and dataset are merged key by key. With a different model,
    the hyperparameters restart from that model's preset (plus the overrides given).
    """

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    name: str | None = Field(default=None, min_length=1, max_length=200)
    model: str | None = None
    dataset: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] | None = None
    tags: list[str] | None = None
    notes: str | None = Field(default=None, max_length=20_000)


class SweepCreate(SQLModel):
    """POST /api/sweeps: one run per combination of the grid's values."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    base: RunCreate | None = None
    base_run_id: int | None = None
    grid: dict[str, list[Any]] = Field(description='Hyperparameter name → values, e.g. {"lr": [0.1, 0.05]}')

    @model_validator(mode="after")
    def _one_base(self) -> SweepCreate:
        if (self.base is None) == (self.base_run_id is None):
            raise ValueError("give exactly one of base and base_run_id")
        return self


class StudyCreate(SQLModel):
    """POST /api/study: the study's presets, each trained with N seeds, as one group on one dataset."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    dataset: DatasetIn = Field(default_factory=DatasetIn)  # type: ignore[valid-type]
    presets: list[str] | None = Field(default=None, description="Study presets; all of them when left out")
    seeds: int = Field(default=3, ge=1, le=20, description="Runs per preset, with seeds first_seed, first_seed+1, …")
    first_seed: int = Field(default=0, ge=0, le=2**31 - 100)


class StudyPublic(RunsPublic):
    group: str = Field(description='The tag every run of the study carries, e.g. "study:3fa2c1"')


# -------------------------------------------------------------------- metrics ---

class MetricPoint(SQLModel, table=True):
    """One value of one metric. name is "<split>/<metric>", e.g. "val/acc" (accuracy as a fraction)."""

    __tablename__ = "metric_point"
    __table_args__ = (
        # Every read: a run's points after an id (the charts and the live stream), its newest id,
        # and the resume's delete by run. The only metric_point index (see migration 0007).
        Index("ix_metric_point_run_id_id", "run_id", "id"),
    )

    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    run_id: int = Field(sa_column=Column(Integer, ForeignKey("run.id", ondelete="CASCADE"), nullable=False))
    step: int
    epoch: float
    split: str = Field(max_length=32)
    name: str = Field(max_length=128)
    # NULL for NaN and infinities: JSON has no such numbers, and SQLite stores NaN as NULL anyway.
    value: float | None = Field(default=None, sa_type=Float)
    time: float = Field(description="Seconds since the run started")


class MetricSeries(SQLModel):
    name: str
    step: list[int]
    epoch: list[float]
    time: list[float]
    value: list[float | None]
    downsampled: bool = False
    total_points: int = 0


class MetricsPublic(SQLModel):
    run_id: int
    series: list[MetricSeries]


# --------------------------------------------------------------------- events ---

class RunEventKind(StrEnum):
    queued = "queued"
    started = "started"
    resumed = "resumed"
    cancel_requested = "cancel_requested"
    cancelled = "cancelled"
    succeeded = "succeeded"
    failed = "failed"
    worker_lost = "worker_lost"
    checkpoint = "checkpoint"
    metrics_truncated = "metrics_truncated"
    info = "info"


class RunEventBase(SQLModel):
    time: datetime = Field(sa_type=UTCDateTime, nullable=False)
    kind: str = Field(max_length=32)
    message: str = Field(default="", sa_type=Text, nullable=False)


class RunEvent(RunEventBase, table=True):
    """One entry of a run's history ("queued", "started on host X", "worker lost", …)."""

    __tablename__ = "run_event"
    __table_args__ = (Index("ix_run_event_run_id_id", "run_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(sa_column=Column(Integer, ForeignKey("run.id", ondelete="CASCADE"), nullable=False))


class RunEventPublic(RunEventBase):
    id: int
    run_id: int


# -------------------------------------------------------------------- workers ---

class WorkerHeartbeat(SQLModel, table=True):
    """A worker process that is alive, whatever the broker (counted by /api/health)."""

    __tablename__ = "worker_heartbeat"
    __table_args__ = (UniqueConstraint("hostname", "pid", name="uq_worker_heartbeat_hostname_pid"),)

    id: int | None = Field(default=None, primary_key=True)
    hostname: str = Field(max_length=255)
    pid: int
    last_seen: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    # What the worker trains on, reported with each heartbeat (null for workers from before 0003).
    device: str | None = Field(default=None, max_length=255)
    precision: str | None = Field(default=None, max_length=64)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class WorkerRunRef(SQLModel):
    id: int
    name: str
    status: RunStatus


class WorkerPublic(SQLModel):
    """One worker process of the fleet (GET /api/workers)."""

    hostname: str = Field(description="Celery node name, e.g. celery@gpu-box-1")
    pid: int
    device: str | None
    precision: str | None
    started_at: datetime | None
    last_seen: datetime
    seconds_since_heartbeat: float
    lost: bool = Field(description="No heartbeat within HEARTBEAT_TIMEOUT_S")
    current_run: WorkerRunRef | None
    finished_count: int
    finished_runs: list[WorkerRunRef] = Field(description="The most recent ones, newest first")


class WorkersPublic(SQLModel):
    data: list[WorkerPublic]
    count: int
    live: int


# ---------------------------------------------------------------- other shapes ---

class HealthPublic(SQLModel):
    status: str = Field(description='"ok", or "degraded" when the database is down')
    database: str = Field(description='"ok" or "down"')
    broker: str = Field(description='"ok" or "down"')
    workers: int = Field(description="Workers with a heartbeat within HEARTBEAT_TIMEOUT_S")


class ModelInfo(SQLModel):
    name: str
    title: str
    description: str
    parameters: int
    trainable_parameters: int
    defaults: dict[str, Any] = Field(description="Every hyperparameter's preset value for this model")


class ModelOptionsIn(SQLModel):
    model_options: dict[str, Any] = Field(default_factory=dict, description="Options of the model's builder")


class ParameterCount(SQLModel):
    parameters: int
    trainable_parameters: int


class LayerRow(SQLModel):
    name: str
    type: str
    shape: str
    weights: int
    biases: int
    parameters: int
    trainable: bool
    formula: str


class CompareRow(SQLModel):
    id: int
    name: str
    model: str
    status: RunStatus
    parameters: int
    duration_s: float | None
    hyperparameters: dict[str, Any]
    final_metrics: dict[str, Any]
    best_metrics: dict[str, Any]


class MetricSummary(SQLModel):
    """One metric over the runs of a group (app/services/stats.Summary)."""

    mean: float | None = Field(description="Mean of the runs' finite values; null when none has one")
    std: float | None = Field(description="Sample standard deviation (n − 1); null below two values")
    n: int = Field(description="Runs with a finite value of this metric")


class CompareGroup(SQLModel):
    value: Any = Field(description="The group_by setting's value that these runs share")
    run_ids: list[int] = Field(description="In the order the runs were asked for")
    n: int = Field(description="Runs in the group")
    summaries: dict[str, MetricSummary] = Field(
        description="Per table metric (train/loss, val/loss, train/acc, val/acc, test/acc): the mean ± std of "
                    "the runs' final values")


class ComparePublic(SQLModel):
    runs: list[CompareRow]
    differing: list[str] = Field(description="Hyperparameters whose values differ between the runs")
    metric_names: list[str]
    group_by: str | None = Field(default=None, description="The setting the runs are grouped by, if any")
    groups: list[CompareGroup] = Field(
        default_factory=list, description="With group_by: one group per value, in the order of its first run")


# ------------------------------------------------------------------- datasets ---

class DatasetBase(SQLModel):
    name: str = Field(description="How runs name it: dataset.name in POST /api/runs")
    kind: str = Field(description='"builtin" (the sample), "cifar10" or "imagefolder"')
    status: str = Field(description='"ready", "downloadable" (CIFAR-10 not here yet), "processing" or "failed"')


class DatasetPublic(DatasetBase):
    path: str
    classes: list[str]
    counts: dict[str, list[int]] = Field(description="Images per class (in `classes` order) of each split")
    images: dict[str, int] = Field(description="Images per split")
    size_bytes: int = Field(description="Size on disk")
    deletable: bool
    message: str = Field(description="Why it failed, how to get it, or what processing is doing")
    progress: float | None = Field(description="0..1 while an upload is processed")


class DatasetsPublic(SQLModel):
    data: list[DatasetPublic]
    count: int
    default: str = Field(description="What a launch without a dataset trains on")


# ------------------------------------------------------------- visualisations ---

class ClassScore(SQLModel):
    name: str
    probability: float = Field(description="Softmax probability, 0..1")


class FeatureMaps(SQLModel):
    layer: str = Field(description="Where the maps are taken, e.g. '1 (ReLU after Conv2d 0)'")
    channels: int = Field(description="Channels shown (the first ones)")
    height: int
    width: int
    image: str = Field(description="The grid as a data:image/png URI, usable as an <img src>")


class ActivationsPublic(SQLModel):
    source: Literal["test", "upload"]
    class_name: str | None = Field(default=None, description="The true class (test images only)")
    index: int | None = Field(default=None, description="Index among the test images of that class")
    predicted: str
    top: list[ClassScore]
    input: str = Field(description="The 32×32 input as a data:image/png URI (fig 3.6)")
    first: FeatureMaps = Field(description="First conv layer's feature maps (fig 3.4)")
    last: FeatureMaps = Field(description="Last conv layer's feature maps, first 128 channels (fig 3.5)")


class ConfusionPublic(SQLModel):
    classes: list[str]
    matrix: list[list[int]] = Field(description="Rows: true class; columns: predicted class")
    per_class_accuracy: list[float] = Field(description="Recall per true class, 0..1")
    total: int = Field(description="Test images counted (the matrix's sum)")
    accuracy: float
    heatmap: dict[str, Any] = Field(description="Plotly figure (data + layout) of the matrix")
    per_class_bar: dict[str, Any] = Field(description="Plotly figure of the per-class accuracy")


class VisualizeInfo(SQLModel):
    run_id: int
    model: str
    checkpoint_step: int
    checkpoint_epoch: float
    classes: list[str]
    test_images_per_class: list[int]
    first_conv: str = Field(description="The layer whose filters fig 3.7 shows")
    first_layer: str
    last_layer: str
