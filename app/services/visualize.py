"""What a run's checkpoint has learnt, for the dashboard: filters, feature maps, confusion matrix.

The study's figures 3.4–3.7 (first-layer filters, feature maps of the first and
last conv layers for one image) and its confusion matrix, computed in the web
process from the run's checkpoint with `ml.visualize`. Callers run these
functions in a worker thread (plain `def` routes), since a forward pass over
the test set takes seconds and must not block the event loop.

Two caches keep repeated views cheap:
* on disk, ARTIFACTS_DIR/<run id>/viz/<checkpoint fingerprint>/ holds each
  computed result (filters.png, activations-c<class>-i<index>.json,
  confusion.json). The fingerprint is the checkpoint's mtime and size, so a new
  checkpoint (a running run evaluates again) gets a fresh folder and the stale
  ones are deleted;
* in memory, small LRUs of loaded models (by the same fingerprint) and of test
  splits (by dataset spec), so that a page's several requests load each once.

Uploaded images are decoded and used in memory only: nothing the user sends is
ever written to disk, so no user-chosen name can reach the file system.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, Hashable, Literal, TypeVar

from pydantic import BaseModel, Field
from sqlmodel import Session

from app.core.config import Settings
from app.models import Run
from app.services import runs
from app.services.errors import Conflict, InvalidInput
from app.services.datasets import load_run_splits

if TYPE_CHECKING:  # torch and ml load lazily: the web app starts without them
    import numpy as np
    import torch
    from torch import nn

    from ml.data import ImageSet

log = logging.getLogger(__name__)

VIZ_FOLDER = "viz"
CACHE_VERSION = 1  # bump when a cached file's content changes, so old folders stop matching
MAX_MODELS = 3  # a resnet18 is ~45 MB; three keep the report's runs warm
MAX_TEST_SETS = 2  # CIFAR-10's test split is 30 MB of uint8
MAX_LAST_CHANNELS = 128  # fig 3.5 shows the last layer's first 128 channels
TOP_PREDICTIONS = 3
INPUT_UPSCALE = 4  # the 32 px input shown at 128 px

# The first bytes of the accepted formats: anything else is refused as the wrong type (415)
# before Pillow parses a byte of it.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", 0), (b"\xff\xd8\xff", 0), (b"WEBP", 8))


# ------------------------------------------------------------------ errors ---

class NoCheckpointYet(Conflict):
    """409: the run has not saved a checkpoint yet (it is queued, or before its first evaluation)."""


class CheckpointUnreadable(Conflict):
    """409: the checkpoint file exists but cannot be loaded (truncated, or not a trainboard checkpoint)."""


class DataUnavailable(Conflict):
    """409: the run's test images cannot be loaded here (e.g. its dataset is not on this machine)."""


class UploadRejected(Exception):
    """An upload the dashboard refuses; `status_code` is the HTTP status, the message is for the user."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


# ---------------------------------------------------------------- API shapes ---

class ClassScore(BaseModel):
    name: str
    probability: float = Field(description="Softmax probability, 0..1")


class FeatureMaps(BaseModel):
    layer: str = Field(description="Where the maps are taken, e.g. '1 (ReLU after Conv2d 0)'")
    channels: int = Field(description="Channels shown (the first ones)")
    height: int
    width: int
    image: str = Field(description="The grid as a data:image/png URI, usable as an <img src>")


class ActivationsPublic(BaseModel):
    source: Literal["test", "upload"]
    class_name: str | None = Field(default=None, description="The true class (test images only)")
    index: int | None = Field(default=None, description="Index among the test images of that class")
    predicted: str
    top: list[ClassScore]
    input: str = Field(description="The 32×32 input as a data:image/png URI (fig 3.6)")
    first: FeatureMaps = Field(description="First conv layer's feature maps (fig 3.4)")
    last: FeatureMaps = Field(description="Last conv layer's feature maps, first 128 channels (fig 3.5)")


class ConfusionPublic(BaseModel):
    classes: list[str]
    matrix: list[list[int]] = Field(description="Rows: true class; columns: predicted class")
    per_class_accuracy: list[float] = Field(description="Recall per true class, 0..1")
    total: int = Field(description="Test images counted (the matrix's sum)")
    accuracy: float
    heatmap: dict[str, Any] = Field(description="Plotly figure (data + layout) of the matrix")
    per_class_bar: dict[str, Any] = Field(description="Plotly figure of the per-class accuracy")


class VisualizeInfo(BaseModel):
    run_id: int
    model: str
    checkpoint_step: int
    checkpoint_epoch: float
    classes: list[str]
    test_images_per_class: list[int]
    first_conv: str = Field(description="The layer whose filters fig 3.7 shows")
    first_layer: str
    last_layer: str


# ----------------------------------------------------------- small caches ---

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LoadingLRU(Generic[K, V]):
    """A thread-safe LRU whose loader runs once per key even when several threads ask together."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[K, V] = OrderedDict()
        self._loading: dict[K, threading.Lock] = {}
        self._lock = threading.Lock()
        self.loads = 0  # how often a loader ran (the tests check cache hits with it)

    def get(self, key: K, load: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # the second thread waits here, then finds the first one's value
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = load()
            with self._lock:
                self.loads += 1
                self._items[key] = value
                self._loading.pop(key, None)
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.loads = 0


@dataclass
class LoadedModel:
    model: nn.Module
    state: dict[str, Any]
    # Forward hooks live on the model: one feature-map computation at a time.
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The confusion matrix runs on its own copy of the model (a pass over the test set takes
    # long enough that feature maps must not wait for it); this lock keeps it to one pass.
    matrix_lock: threading.Lock = field(default_factory=threading.Lock)


MODELS: LoadingLRU[tuple[str, int, int], LoadedModel] = LoadingLRU(MAX_MODELS)
TEST_SETS: LoadingLRU[str, ImageSet] = LoadingLRU(MAX_TEST_SETS)


def clear_memory_caches() -> None:
    """Forget loaded models and test sets (tests; run ids repeat across their databases)."""
    MODELS.clear()
    TEST_SETS.clear()


# ------------------------------------------------------------- checkpoint ---

@dataclass(frozen=True)
class CheckpointRef:
    """A run's checkpoint file as it is now; the fingerprint changes whenever the file does."""

    run: Run
    path: Path
    mtime_ns: int
    size: int

    @property
    def fingerprint(self) -> str:
        return f"v{CACHE_VERSION}-{self.mtime_ns:x}-{self.size:x}"


def checkpoint_of(*, session: Session, run_id: int, settings: Settings) -> CheckpointRef:
    """The run's checkpoint; NotFound (unknown run, missing file), NoCheckpointYet, or Forbidden."""
    run = runs.get_run(session=session, run_id=run_id)
    if not run.checkpoint_path:
        raise NoCheckpointYet(f"run {run_id} has no checkpoint yet (it is {run.status}); visualisations "
                              f"appear once it has saved one, at its first evaluation")
    path = runs.checkpoint_file(session=session, run_id=run_id, settings=settings)
    stat = path.stat()
    return CheckpointRef(run=run, path=path, mtime_ns=stat.st_mtime_ns, size=stat.st_size)


def loaded_model(ref: CheckpointRef) -> LoadedModel:
    def load() -> LoadedModel:
        from ml.trainer import model_from_checkpoint

        try:
            model, state = model_from_checkpoint(ref.path)
        except (ValueError, RuntimeError, KeyError) as err:  # unreadable file, or weights of another shape
            raise CheckpointUnreadable(f"run {ref.run.id}'s checkpoint cannot be loaded: {err}") from err
        return LoadedModel(model=model, state=state)

    return MODELS.get((str(ref.path), ref.mtime_ns, ref.size), load)


# ------------------------------------------------------------- disk cache ---

def viz_dir(ref: CheckpointRef, settings: Settings) -> Path:
    """ARTIFACTS_DIR/<run id>/viz/<fingerprint>/ (not created here)."""
    return runs.run_artifacts_dir(ref.run.id, settings) / VIZ_FOLDER / ref.fingerprint


def _cached(ref: CheckpointRef, settings: Settings, name: str, compute: Callable[[], bytes],
            lock_of: Callable[[LoadedModel], threading.Lock] = lambda loaded: loaded.lock) -> bytes:
    """The bytes of `name` in the checkpoint's cache folder, computed (under the model's lock) when absent."""
    path = viz_dir(ref, settings) / name
    if path.is_file():
        return path.read_bytes()
    with lock_of(loaded_model(ref)):
        if path.is_file():  # another request computed it while this one waited
            return path.read_bytes()
        data = compute()
        _write_atomically(path, data)  # before the lock goes, so that a waiting request finds it
    _remove_stale_folders(path.parent)
    _keep_newest_files(path.parent, settings.MAX_CACHED_VISUALIZATIONS)
    return data


def _keep_newest_files(folder: Path, max_files: int) -> None:
    """At most MAX_CACHED_VISUALIZATIONS files per run: one per test image would fill the disk."""
    try:
        files = [(entry.stat().st_mtime_ns, entry) for entry in folder.iterdir() if entry.is_file()]
    except OSError:
        return
    if len(files) <= max_files:
        return
    for _mtime, old in sorted(files, key=lambda item: item[0])[:len(files) - max_files]:
        old.unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers never see half a file; a read-only artifacts folder only costs the cache."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("cannot cache %s (%s); it is computed again next time", path, err)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _remove_stale_folders(current: Path) -> None:
    """Delete the cache folders of the run's earlier checkpoints."""
    try:
        siblings = [p for p in current.parent.iterdir() if p != current and p.is_dir()]
    except OSError:  # nothing was written (read-only artifacts): nothing to clean either
        return
    for sibling in siblings:
        shutil.rmtree(sibling, ignore_errors=True)


# -------------------------------------------------------------- test data ---

def _dataset_key(run: Run, settings: Settings) -> str:
    """What decides the test split: the dataset spec, and (for the train/val cut load_splits makes) seed and fraction."""
    return json.dumps({"dataset": run.dataset, "seed": run.hyperparameters.get("seed"),
                       "val_fraction": run.hyperparameters.get("val_fraction"),
                       "datasets_dir": str(settings.DATASETS_DIR)}, sort_keys=True)


def test_split(run: Run, settings: Settings) -> ImageSet:
    """The run's test images exactly as its worker scored them (same spec, limit and subset seed)."""
    def load() -> ImageSet:
        from ml.config import ConfigError
        from ml.data import DatasetError

        try:
            _, splits = load_run_splits(run, settings=settings)
        except (DatasetError, ConfigError) as err:
            raise DataUnavailable(f"run {run.id}'s test images cannot be loaded: {err}") from err
        return splits.test

    return TEST_SETS.get(_dataset_key(run, settings), load)


def _images_per_class(test: ImageSet) -> list[int]:
    import torch

    return torch.bincount(test.labels, minlength=len(test.classes)).tolist()


def test_image(test: ImageSet, class_name: str, index: int) -> torch.Tensor:
    """The `index`-th test image of class `class_name`; InvalidInput names the valid range."""
    if class_name not in test.classes:
        raise InvalidInput([(("class_name",), f"unknown class {class_name!r}; valid: {', '.join(test.classes)}")])
    positions = (test.labels == test.classes.index(class_name)).nonzero().flatten()
    if not 0 <= index < len(positions):
        valid = f"0–{len(positions) - 1}" if len(positions) else "none: the class has no test images"
        raise InvalidInput([(("index",), f"class {class_name} has {len(positions)} test images; index must be {valid}")])
    return test.images[positions[index]]


# ------------------------------------------------------------------ model ---

def _module_name(model: nn.Module, target: nn.Module) -> str:
    """`target`'s name in `model` with its type: "layer 1 (ReLU)" in a Sequential, "net.layer4 (Sequential)"."""
    name = next((n for n, m in model.named_modules() if m is target), "")
    where = f"layer {name}" if name.isdigit() else name or "the model"
    return f"{where} ({type(target).__name__})"


def _output_classes(model: nn.Module, dataset_classes: list[str]) -> list[str]:
    """Names for every model output: the dataset's classes, then "output k" for any it lacks."""
    from torch import nn

    outputs = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    return [*dataset_classes[:outputs], *(f"output {k}" for k in range(len(dataset_classes), outputs))]


def info(*, session: Session, run_id: int, settings: Settings) -> VisualizeInfo:
    """What the visualise page needs before it asks for pictures: classes, test-set sizes, layer names."""
    # first_feature_module is where ml.visualize.activations takes fig 3.4's maps: naming the
    # layer from the same function keeps the page's caption true whatever the model.
    from ml.visualize import first_feature_module, first_conv, last_conv_module

    ref = checkpoint_of(session=session, run_id=run_id, settings=settings)
    loaded = loaded_model(ref)
    test = test_split(ref.run, settings)
    model = loaded.model
    return VisualizeInfo(
        run_id=run_id, model=ref.run.model,
        checkpoint_step=int(loaded.state.get("step", 0)), checkpoint_epoch=float(loaded.state.get("epoch", 0.0)),
        classes=list(test.classes), test_images_per_class=_images_per_class(test),
        first_conv=_module_name(model, first_conv(model)),
        first_layer=_module_name(model, first_feature_module(model)),
        last_layer=_module_name(model, last_conv_module(model)),
    )


# ---------------------------------------------------------------- filters ---

def filter_grid_png(*, session: Session, run_id: int, settings: Settings) -> bytes:
    """The first conv layer's filters as an RGB grid (fig 3.7), PNG bytes."""
    ref = checkpoint_of(session=session, run_id=run_id, settings=settings)

    def compute() -> bytes:
        from ml.visualize import filter_grid, to_png

        return to_png(filter_grid(loaded_model(ref).model))

    return _cached(ref, settings, "filters.png", compute)


# ------------------------------------------------------------ activations ---

def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _feature_maps(maps: np.ndarray, layer: str) -> FeatureMaps:
    from ml.visualize import channel_grid, to_png

    channels, height, width = maps.shape
    # Tiles of about 64 px whatever the map size: 8×8 maps ×4, 32×32 ×2, resnet18's 128×128 ×1.
    upscale = max(1, min(4, 64 // max(height, 1)))
    png = to_png(channel_grid(maps, upscale=upscale))
    return FeatureMaps(layer=layer, channels=channels, height=height, width=width, image=png_data_uri(png))


def _predict(model: nn.Module, image: torch.Tensor, classes: list[str]) -> list[ClassScore]:
    import torch

    from ml.batching import normalize

    with torch.no_grad():
        probabilities = torch.softmax(model(normalize(image.unsqueeze(0))).float(), dim=1)[0]
    top = torch.topk(probabilities, k=min(TOP_PREDICTIONS, len(probabilities)))
    return [ClassScore(name=classes[i], probability=round(float(p), 4))
            for p, i in zip(top.values.tolist(), top.indices.tolist())]


def _activations(loaded: LoadedModel, image: torch.Tensor, classes: list[str], **source: Any) -> ActivationsPublic:
    """Feature maps and prediction for one uint8 3×32×32 image; the caller holds the model's lock."""
    import numpy as np

    from ml.visualize import first_feature_module, activations, last_conv_module, to_png

    model = loaded.model
    maps = activations(model, image, max_channels=MAX_LAST_CHANNELS)
    big_input = np.repeat(np.repeat(maps["input"], INPUT_UPSCALE, axis=0), INPUT_UPSCALE, axis=1)
    top = _predict(model, image, _output_classes(model, classes))
    return ActivationsPublic(
        **source, predicted=top[0].name, top=top, input=png_data_uri(to_png(big_input)),
        first=_feature_maps(maps["first"], _module_name(model, first_feature_module(model))),
        last=_feature_maps(maps["last"], _module_name(model, last_conv_module(model))),
    )


def test_image_activations(*, session: Session, run_id: int, settings: Settings,
                           class_name: str, index: int) -> ActivationsPublic:
    """Figs 3.4–3.6 for the `index`-th test image of `class_name`, cached per checkpoint."""
    ref = checkpoint_of(session=session, run_id=run_id, settings=settings)
    test = test_split(ref.run, settings)
    image = test_image(test, class_name, index)  # checks the request before anything is cached
    class_index = test.classes.index(class_name)

    def compute() -> bytes:
        result = _activations(loaded_model(ref), image, test.classes, source="test",
                              class_name=class_name, index=index)
        return result.model_dump_json().encode()

    raw = _cached(ref, settings, f"activations-c{class_index}-i{index}.json", compute)
    return ActivationsPublic.model_validate_json(raw)


def activation_png(result: ActivationsPublic, layer: Literal["input", "first", "last"]) -> bytes:
    """One of the three images of `result` as PNG bytes."""
    uri = result.input if layer == "input" else getattr(result, layer).image
    return base64.b64decode(uri.split(",", 1)[1])


def check_upload(data: bytes, max_bytes: int) -> None:
    """Refuse by size (413) or by the first bytes (415) before any decoder sees the data."""
    if len(data) > max_bytes:
        raise UploadRejected(413, f"The file is larger than {max_bytes / 2**20:.0f} MB; "
                                  f"upload a smaller PNG, JPEG or WebP image.")
    if data and not any(data[offset:offset + len(magic)] == magic for magic, offset in _MAGIC):
        raise UploadRejected(415, "This file is not a PNG, JPEG or WebP image; upload one of those formats.")


def upload_activations(*, session: Session, run_id: int, settings: Settings, data: bytes) -> ActivationsPublic:
    """Figs 3.4–3.6 for an uploaded image, computed in memory (never cached, never written)."""
    from ml.visualize import MAX_UPLOAD_BYTES, ImageRejected, load_image

    ref = checkpoint_of(session=session, run_id=run_id, settings=settings)
    check_upload(data, MAX_UPLOAD_BYTES)
    try:
        image = load_image(data)
    except ImageRejected as err:  # truncated, corrupt, too many pixels, an unaccepted variant
        raise UploadRejected(422, str(err)) from err
    test = test_split(ref.run, settings)
    loaded = loaded_model(ref)
    with loaded.lock:
        return _activations(loaded, image, test.classes, source="upload")


# -------------------------------------------------------- confusion matrix ---

def _figure_json(figure: Any) -> dict[str, Any]:
    return json.loads(figure.to_json())


def _layout(**overrides: Any) -> dict[str, Any]:
    """No template and transparent backgrounds: the page's charts.js adds the light or dark theme."""
    return {"template": "none", "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)",
            "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
            **overrides}


def confusion_heatmap(matrix: list[list[int]], classes: list[str]) -> dict[str, Any]:
    """The matrix as a Plotly heatmap: true class down, predicted class across, counts in the cells."""
    import plotly.graph_objects as go

    figure = go.Figure(go.Heatmap(
        z=matrix, x=classes, y=classes, colorscale="Blues", texttemplate="%{z}", showscale=False, xgap=1, ygap=1,
        hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>",
    ))
    figure.update_layout(_layout(
        xaxis={"title": {"text": "predicted class"}, "side": "bottom", "tickangle": -35, "showgrid": False},
        yaxis={"title": {"text": "true class"}, "autorange": "reversed", "showgrid": False},
        margin={"l": 96, "r": 8, "t": 8, "b": 96}, height=460,
    ))
    return _figure_json(figure)


def per_class_bar(accuracy: list[float], classes: list[str]) -> dict[str, Any]:
    import plotly.graph_objects as go

    percent = [round(100 * a, 2) for a in accuracy]
    figure = go.Figure(go.Bar(x=classes, y=percent, text=[f"{p:.1f}%" for p in percent], textposition="outside",
                              hovertemplate="%{x}: %{y:.1f}%<extra></extra>", marker={"color": "#4c78a8"},
                              cliponaxis=False))
    figure.update_layout(_layout(
        yaxis={"title": {"text": "test accuracy (%)"}, "range": [0, 105], "showgrid": True},
        xaxis={"tickangle": -35, "showgrid": False},
        margin={"l": 64, "r": 8, "t": 24, "b": 96}, height=460,
    ))
    return _figure_json(figure)


def confusion(*, session: Session, run_id: int, settings: Settings) -> ConfusionPublic:
    """The confusion matrix and per-class accuracy over the run's whole test split, cached per checkpoint."""
    ref = checkpoint_of(session=session, run_id=run_id, settings=settings)

    def compute() -> bytes:
        import copy

        import torch

        from ml.visualize import confusion_matrix, per_class_accuracy

        test = test_split(ref.run, settings)
        # A copy: feature-map hooks registered on the shared model meanwhile must not fire in this pass.
        model = copy.deepcopy(loaded_model(ref).model)
        classes = _output_classes(model, test.classes)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        matrix = confusion_matrix(model, test.images, test.labels, num_classes=len(classes), device=device)
        accuracy = per_class_accuracy(matrix).tolist()
        rows = matrix.tolist()
        total = int(matrix.sum())
        result = ConfusionPublic(
            classes=classes, matrix=rows, per_class_accuracy=accuracy, total=total,
            accuracy=float(matrix.trace()) / total if total else 0.0,
            heatmap=confusion_heatmap(rows, classes), per_class_bar=per_class_bar(accuracy, classes))
        return result.model_dump_json().encode()

    raw = _cached(ref, settings, "confusion.json", compute, lock_of=lambda loaded: loaded.matrix_lock)
    return ConfusionPublic.model_validate_json(raw)
