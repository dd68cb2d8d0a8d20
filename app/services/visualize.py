"""What a run's checkpoint has learnt, for the dashboard: filters, feature maps, confusion matrix.

The study's figures 3.4–3.7 (first-layer filters, feature maps of the first and
last conv layers for one image) and its confusion matrix, computed in the web
process from the run's checkpoint with `ml.visualize`. Callers run these
functions in a worker thread (plain `def` routes), since a forward pass over
the test set takes seconds and must not block the event loop.

The caches that keep repeated views cheap are in app/services/viz_cache.py
(loaded models, computed results on disk), the test images in
app/services/viz_data.py, the API shapes in app/models.py, the errors in
app/services/errors.py and the Plotly figures in app/core/figures.py.

Uploaded images are decoded and used in memory only: nothing the user sends is
ever written to disk, so no user-chosen name can reach the file system.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, Literal

from sqlmodel import Session

from app.core import figures
from app.core.config import Settings
from app.models import ActivationsPublic, ClassScore, ConfusionPublic, FeatureMaps, VisualizeInfo
from app.services import viz_cache, viz_data
from app.services.errors import UploadRejected
from app.services.viz_cache import LoadedModel

if TYPE_CHECKING:  # torch and ml load lazily: the web app starts without them
    import numpy as np
    import torch
    from torch import nn

MAX_LAST_CHANNELS = 128  # fig 3.5 shows the last layer's first 128 channels
TOP_PREDICTIONS = 3
INPUT_UPSCALE = 4  # the 32 px input shown at 128 px

# The first bytes of the accepted formats: anything else is refused as the wrong type (415)
# before Pillow parses a byte of it.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", 0), (b"\xff\xd8\xff", 0), (b"WEBP", 8))


def clear_memory_caches() -> None:
    """Forget loaded models and test sets (tests; run ids repeat across their databases)."""
    viz_cache.MODELS.clear()
    viz_data.TEST_SETS.clear()


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

    ref = viz_cache.checkpoint_of(session=session, run_id=run_id, settings=settings)
    loaded = viz_cache.loaded_model(ref)
    test = viz_data.test_split(ref.run, settings)
    model = loaded.model
    return VisualizeInfo(
        run_id=run_id, model=ref.run.model,
        checkpoint_step=int(loaded.state.get("step", 0)), checkpoint_epoch=float(loaded.state.get("epoch", 0.0)),
        classes=list(test.classes), test_images_per_class=viz_data.images_per_class(test),
        first_conv=_module_name(model, first_conv(model)),
        first_layer=_module_name(model, first_feature_module(model)),
        last_layer=_module_name(model, last_conv_module(model)),
    )


# ---------------------------------------------------------------- filters ---

def filter_grid_png(*, session: Session, run_id: int, settings: Settings) -> bytes:
    """The first conv layer's filters as an RGB grid (fig 3.7), PNG bytes."""
    ref = viz_cache.checkpoint_of(session=session, run_id=run_id, settings=settings)

    def compute() -> bytes:
        from ml.visualize import filter_grid, to_png

        return to_png(filter_grid(viz_cache.loaded_model(ref).model))

    return viz_cache.cached(ref, settings, "filters.png", compute)


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
    ref = viz_cache.checkpoint_of(session=session, run_id=run_id, settings=settings)
    test = viz_data.test_split(ref.run, settings)
    image = viz_data.test_image(test, class_name, index)  # checks the request before anything is cached
    class_index = test.classes.index(class_name)

    def compute() -> bytes:
        result = _activations(viz_cache.loaded_model(ref), image, test.classes, source="test",
                              class_name=class_name, index=index)
        return result.model_dump_json().encode()

    raw = viz_cache.cached(ref, settings, f"activations-c{class_index}-i{index}.json", compute)
    return ActivationsPublic.model_validate_json(raw)


def activation_png(result: ActivationsPublic, layer: Literal["input", "first", "last"]) -> bytes:
    """One of the three images of `result` as PNG bytes."""
    uri = result.input if layer == "input" else getattr(result, layer).image
    return base64.b64decode(uri.split(",", 1)[1])


def check_upload(data: bytes) -> None:
    """Refuse by the first bytes (415) before any decoder sees the data. Its size was held to
    MAX_UPLOAD_BYTES while it streamed in (app/api/routes/visualize.py)."""
    if data and not any(data[offset:offset + len(magic)] == magic for magic, offset in _MAGIC):
        raise UploadRejected(415, "This file is not a PNG, JPEG or WebP image; upload one of those formats.")


def upload_activations(*, session: Session, run_id: int, settings: Settings, data: bytes) -> ActivationsPublic:
    """Figs 3.4–3.6 for an uploaded image, computed in memory (never cached, never written)."""
    from ml.visualize import ImageRejected, load_image

    ref = viz_cache.checkpoint_of(session=session, run_id=run_id, settings=settings)
    check_upload(data)
    try:
        image = load_image(data)
    except ImageRejected as err:  # truncated, corrupt, too many pixels, an unaccepted variant
        raise UploadRejected(422, str(err)) from err
    test = viz_data.test_split(ref.run, settings)
    loaded = viz_cache.loaded_model(ref)
    with loaded.lock:
        return _activations(loaded, image, test.classes, source="upload")


# -------------------------------------------------------- confusion matrix ---

def confusion(*, session: Session, run_id: int, settings: Settings) -> ConfusionPublic:
    """The confusion matrix and per-class accuracy over the run's whole test split, cached per checkpoint."""
    ref = viz_cache.checkpoint_of(session=session, run_id=run_id, settings=settings)

    def compute() -> bytes:
        import copy

        import torch

        from ml.visualize import confusion_matrix, per_class_accuracy

        test = viz_data.test_split(ref.run, settings)
        # A copy: feature-map hooks registered on the shared model meanwhile must not fire in this pass.
        model = copy.deepcopy(viz_cache.loaded_model(ref).model)
        classes = _output_classes(model, test.classes)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        matrix = confusion_matrix(model, test.images, test.labels, num_classes=len(classes), device=device)
        accuracy = per_class_accuracy(matrix).tolist()
        rows = matrix.tolist()
        total = int(matrix.sum())
        result = ConfusionPublic(
            classes=classes, matrix=rows, per_class_accuracy=accuracy, total=total,
            accuracy=float(matrix.trace()) / total if total else 0.0,
            heatmap=figures.confusion_heatmap(rows, classes), per_class_bar=figures.per_class_bar(accuracy, classes))
        return result.model_dump_json().encode()

    raw = viz_cache.cached(ref, settings, "confusion.json", compute, lock_of=lambda loaded: loaded.matrix_lock)
    return ConfusionPublic.model_validate_json(raw)
