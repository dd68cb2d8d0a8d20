"""The data behind the dashboard's grids: filters, feature maps, layer tables, confusion matrices.

Everything here returns plain numpy arrays or PNG bytes, so that the web layer
only has to draw (plotly) or serve them; `ml/` itself stays free of plotting
libraries. Every function works for every model in `ml.models.MODELS`: the
CNNs (an `nn.Sequential`) and the ResNet18 transfer model.

Figures reproduced from the study: 3.4/3.5/3.6 (feature maps of the first and
last conv layers, see `activations`), 3.7 (first-layer filters, `filter_grid`)
and the parameter arithmetic of task 1c (`layer_table`).

Which module the feature maps are taken from
--------------------------------------------
* "first" — CNNs: the first conv layer's *activation* module (ReLU/ELU/...),
  i.e. what the next layer sees; with order "conv_bn_act" that is after batch
  norm, with "conv_act_bn" before it. ResNet18: `net.conv1`'s raw output.
* "last" — CNNs: the activation module of the *last* Conv2d, before pooling and
  dropout, so the maps keep the resolution the conv worked at (task1: 128×8×8
  rather than 128×4×4 after the pool). ResNet18: the output of `net.layer4`.
A CNN whose conv has no activation after it falls back to the conv itself.
"""

from __future__ import annotations

import io
import math
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn
from torchvision.models import ResNet

from ml.batching import normalize
from ml.models import ACTIVATIONS, ResNet18Transfer

# Modules that count as "the activation after a conv" when walking a Sequential.
_ACTIVATION_TYPES: tuple[type[nn.Module], ...] = tuple(ACTIVATIONS.values()) + (
    nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.PReLU, nn.ReLU6,
)
# Walking forward from a conv stops at these: past them the activation belongs to another layer.
_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear, nn.Flatten)

MID_GREY = 128  # what a constant filter or channel is drawn as: no contrast to stretch
BACKGROUND = 255  # the gaps between tiles of a grid


# ------------------------------------------------------------ layer lookup ---

def _resnet(model: nn.Module) -> ResNet | None:
    """The torchvision ResNet inside `model`, or None for the CNNs."""
    if isinstance(model, ResNet18Transfer):
        return model.net
    return model if isinstance(model, ResNet) else None


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer")
    return convs


def _activation_after(model: nn.Module, conv: nn.Conv2d) -> nn.Module:
    """The activation that follows `conv` in a Sequential (skipping e.g. BatchNorm), else `conv`."""
    if not isinstance(model, nn.Sequential):
        return conv
    children = list(model)
    start = next((i for i, m in enumerate(children) if m is conv), None)
    if start is None:  # the conv sits deeper than the top level: no simple "next module"
        return conv
    for module in children[start + 1:]:
        if isinstance(module, _ACTIVATION_TYPES):
            return module
        if isinstance(module, _LAYER_TYPES):
            break
    return conv


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first convolution: the one whose filters look at RGB pixels."""
    resnet = _resnet(model)
    return resnet.conv1 if resnet is not None else _convs(model)[0]


def first_feature_module(model: nn.Module) -> nn.Module:
    """Where the "first" feature maps are taken (see the module docstring)."""
    resnet = _resnet(model)
    if resnet is not None:
        return resnet.conv1
    return _activation_after(model, first_conv(model))


def last_conv_module(model: nn.Module) -> nn.Module:
    """Where the "last" feature maps are taken: the last Conv2d's activation for CNNs, layer4 for ResNets."""
    resnet = _resnet(model)
    if resnet is not None:
        return resnet.layer4
    return _activation_after(model, _convs(model)[-1])


# ------------------------------------------------------------------- grids ---

def _stretch(values: np.ndarray) -> np.ndarray:
    """Min-max each item along axis 0 to uint8 0..255; a constant item becomes mid grey."""
    flat = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    flat = flat.reshape(len(values), -1)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = hi - lo
    constant = span == 0
    scaled = (flat - lo) / np.where(constant, 1.0, span) * 255.0
    scaled = np.where(constant, float(MID_GREY), scaled)
    return np.rint(scaled).astype(np.uint8).reshape(values.shape)


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for `count` tiles, wider than tall when not square."""
    cols = max(1, math.ceil(math.sqrt(count)))
    return max(1, math.ceil(count / cols)), cols


def _tile(tiles: np.ndarray, pad: int, upscale: int) -> np.ndarray:
    """N×h×w×3 uint8 tiles → one near-square grid, each tile upscaled, `pad` px of background around each.

    Tile i sits at row i // cols, column i % cols, with its top-left corner at
    (pad + row * (h * upscale + pad), pad + col * (w * upscale + pad)).
    """
    if pad < 0 or upscale < 1:
        raise ValueError("pad must be >= 0 and upscale >= 1")
    # Nearest-neighbour upscaling, so that each weight or activation stays one crisp square.
    tiles = tiles.repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, h, w, _ = tiles.shape
    rows, cols = grid_shape(n)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), BACKGROUND, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        y, x = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[y:y + h, x:x + w] = tile
    return grid


def filter_grid(model: nn.Module, *, pad: int = 1, upscale: int = 4) -> np.ndarray:
    """The first conv layer's filters as an H×W×3 uint8 RGB grid (the study's fig 3.7).

    Each filter is min-max normalised on its own, over its three colour channels
    together, so the colours show what the filter responds to, not its scale.
    """
    weight = first_conv(model).weight.detach().cpu().float().numpy()  # out × in × k × k
    if weight.shape[1] != 3:  # not an RGB filter: show the mean over input channels as grey
        weight = np.repeat(weight.mean(axis=1, keepdims=True), 3, axis=1)
    tiles = _stretch(weight).transpose(0, 2, 3, 1)  # out × k × k × RGB
    return _tile(tiles, pad, upscale)


def channel_grid(maps: np.ndarray, *, pad: int = 1, upscale: int = 2) -> np.ndarray:
    """C×h×w feature maps → an H×W×3 uint8 grid of grey tiles, each channel normalised on its own."""
    if maps.ndim != 3:
        raise ValueError(f"expected C×h×w maps, got shape {maps.shape}")
    grey = _stretch(maps)
    return _tile(np.repeat(grey[..., None], 3, axis=3), pad, upscale)


def to_png(array: np.ndarray) -> bytes:
    """An H×W×3 (RGB) or H×W (grey) uint8 array as PNG bytes."""
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"expected H×W×3 or H×W uint8, got {array.dtype} of shape {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------- activations ---

def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def _evaluating(model: nn.Module, device: torch.device | str | None = None) -> Iterator[nn.Module]:
    """Eval mode, no grad and (optionally) `device` for the block; the caller's mode and device come back after.

    The dashboard may be handed a model that is still being trained, so neither
    the train flag (dropout, batch-norm statistics) nor its device may leak.
    """
    was_training, home = model.training, _device(model)
    if device is not None:
        model.to(device)
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
        if device is not None:
            model.to(home)


def activations(model: nn.Module, image: torch.Tensor, *, max_channels: int = 128) -> dict[str, np.ndarray]:
    """Feature maps of one uint8 3×32×32 image (the study's figs 3.4–3.6).

    Returns {"input": H×W×3 uint8, "first": C×h×w float32, "last": C×h×w float32};
    both map stacks are capped at `max_channels` channels (the first ones).
    Where each is taken is described in the module docstring.
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 3×H×W image, got {image.dtype} of shape {tuple(image.shape)}")
    points = {"first": first_feature_module(model), "last": last_conv_module(model)}
    captured: dict[str, torch.Tensor] = {}

    def hook(key: str):
        def save(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            # Clone: an in-place activation further on could otherwise overwrite what we keep.
            captured[key] = output.detach()[0, :max_channels].float().cpu().clone()
        return save

    handles = [module.register_forward_hook(hook(key)) for key, module in points.items()]
    try:
        with _evaluating(model):
            model(normalize(image.unsqueeze(0), _device(model)))
    finally:
        for handle in handles:
            handle.remove()
    maps = {key: captured[key].numpy() for key in points}
    return {"input": image.permute(1, 2, 0).cpu().numpy().copy(), **maps}


# ------------------------------------------------------------- layer table ---

def _formula(module: nn.Module, params: dict[str, nn.Parameter]) -> str:
    """The parameter count written out, in the study's order: in*out*k*k + bias for conv and linear layers."""
    terms = []
    for name, param in params.items():
        dims = list(param.shape)
        if name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)):
            dims[0], dims[1] = dims[1], dims[0]  # weights are stored out×in; the study writes in*out
        terms.append("*".join(str(d) for d in dims) or "1")
    return " + ".join(terms)


def layer_table(model: nn.Module) -> list[dict]:
    """One row per layer that owns parameters (the leaves, for every registered model).

    Row: name, type, shape (of the weight, e.g. "32x3x5x5"), weights, biases,
    parameters, trainable, formula (e.g. "3*32*5*5 + 32"). Only parameters are
    counted: BatchNorm's running statistics are buffers. The `parameters`
    column sums to `count_parameters(model)`; task1 gives 2432, 51264, 204928,
    131136 and 650, i.e. 390,410 (the study's task 1c).
    """
    rows = []
    for name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if not params:
            continue
        weight, bias = params.get("weight"), params.get("bias")
        shaped = weight if weight is not None else next(iter(params.values()))
        rows.append({
            "name": name,
            "type": type(module).__name__,
            "shape": "x".join(str(d) for d in shaped.shape),
            "weights": weight.numel() if weight is not None else 0,
            "biases": bias.numel() if bias is not None else 0,
            "parameters": sum(p.numel() for p in params.values()),
            "trainable": all(p.requires_grad for p in params.values()),
            "formula": _formula(module, params),
        })
    return rows


# -------------------------------------------------------- confusion matrix ---

def confusion_matrix(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                     num_classes: int = 10, batch_size: int = 500,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """num_classes × num_classes int64 counts: rows are the true class, columns the predicted one.

    `images` are uint8 N×3×32×32. The model runs on `device` in eval mode and is
    put back on its own device and mode afterwards.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    labels = labels.long().cpu()
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    with _evaluating(model, device):
        for start in range(0, len(images), batch_size):
            logits = model(normalize(images[start:start + batch_size], device))
            if logits.shape[1] != num_classes:
                raise ValueError(f"the model gives {logits.shape[1]} outputs, expected {num_classes}")
            predicted = logits.argmax(dim=1).cpu()
            truth = labels[start:start + batch_size]
            # One bincount per batch over flat (true, predicted) cell indices.
            counts += torch.bincount(truth * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes).numpy()


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall per true class: the diagonal over the row sums; 0 for a class with no samples."""
    totals = matrix.sum(axis=1)
    correct = np.diagonal(matrix).astype(np.float64)
    return np.divide(correct, totals, out=np.zeros(len(totals), dtype=np.float64), where=totals > 0)


# ------------------------------------------------------------ image upload ---

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_SIDE = 4096
ALLOWED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}
_ALLOWED_TEXT = "a PNG, JPEG or WebP image"


class ImageRejected(ValueError):
    """An uploaded image the dashboard will not decode; the message is meant for the user."""


def _open_checked(data: bytes) -> Image.Image:
    """Open and fully decode `data`, turning every way it can be unsafe or broken into ImageRejected."""
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse both.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageRejected("The image has too many pixels to be decoded safely.") from err
        except UnidentifiedImageError as err:
            raise ImageRejected(f"The file is not a recognised image; upload {_ALLOWED_TEXT}.") from err
        except Exception as err:  # any parser failure on untrusted bytes is the file's fault
            raise ImageRejected("The image is corrupt and could not be read.") from err

        # The format as decoded from the bytes, never the file name or the claimed content type.
        if image.format not in ALLOWED_FORMATS:
            raise ImageRejected(f"{image.format or 'This'} images are not accepted; upload {_ALLOWED_TEXT}.")
        width, height = image.size
        if width > MAX_SIDE or height > MAX_SIDE:
            raise ImageRejected(
                f"The image is {width}x{height} pixels; images may be at most {MAX_SIDE}x{MAX_SIDE}.")
        try:
            # open() only reads the header: decoding now is what finds truncated or broken data.
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageRejected("The image has too many pixels to be decoded safely.") from err
        except Exception as err:
            raise ImageRejected("The image is truncated or corrupt and could not be decoded.") from err
    return image


def load_image(data: bytes) -> torch.Tensor:
    """Uploaded image bytes → a uint8 3×32×32 RGB tensor, or ImageRejected with a message for the user.

    Accepts PNG, JPEG and WebP of at most 5 MB and 4096×4096 pixels. The image
    is turned upright from its EXIF orientation (phone photos), then centre-
    cropped to a square and resized to 32×32, so objects keep their proportions
    as in CIFAR. Relies on Pillow's default `ImageFile.LOAD_TRUNCATED_IMAGES =
    False`; nothing in trainboard changes it.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageRejected(f"The file is {len(data) / 2**20:.1f} MB; uploads may be at most 5 MB.")
    if not data:
        raise ImageRejected(f"The file is empty; upload {_ALLOWED_TEXT}.")
    image = _open_checked(data)
    try:
        image = ImageOps.exif_transpose(image).convert("RGB")
        small = ImageOps.fit(image, (32, 32), method=Image.Resampling.LANCZOS)
    except Exception as err:  # e.g. a malformed EXIF block
        raise ImageRejected("The image could not be converted to RGB.") from err
    return torch.from_numpy(np.asarray(small, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
