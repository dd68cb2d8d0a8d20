"""ml.visualize: grids, feature maps, layer tables, confusion matrices and safe image uploads."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ml import visualize as viz
from ml.batching import CIFAR_MEAN, CIFAR_STD
from ml.models import MODELS, build_model, count_parameters

ALL_MODELS = list(MODELS)


def make(name: str, **options) -> nn.Module:
    """A fresh model; resnet18 without ImageNet weights and without upsampling, to stay fast."""
    if name == "resnet18":
        options = {"upsample": 1, **options}
    return build_model(name, options, pretrained=False)


@cache
def shared(name: str) -> nn.Module:
    """One model per name for the read-only tests (building resnet18 costs a few hundred ms)."""
    return make(name)


def random_image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g)


def encode(array: np.ndarray, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def tiles(grid: np.ndarray, count: int, size: int, pad: int) -> list[np.ndarray]:
    """Cut the first `count` tiles of side `size` out of a grid laid out as _tile documents."""
    _, cols = viz.grid_shape(count)
    step = size + pad
    return [grid[pad + (i // cols) * step:][:size, pad + (i % cols) * step:][:, :size] for i in range(count)]


# ------------------------------------------------------------------ layers ---

# (filters, kernel size) of each model's first conv layer.
FIRST_CONV = {"task1": (32, 5), "net1": (32, 3), "net2": (32, 5), "resnet18": (64, 7), "custom": (32, 3)}


def test_first_conv_every_model():
    assert set(FIRST_CONV) == set(MODELS), "a new model needs its expected first conv here"
    for name, (filters, k) in FIRST_CONV.items():
        conv = viz.first_conv(shared(name))
        assert (conv.out_channels, conv.in_channels, conv.kernel_size) == (filters, 3, (k, k)), name


def test_last_conv_module_cnn_is_last_conv_activation():
    model = shared("task1")
    last = viz.last_conv_module(model)
    convs = [i for i, m in enumerate(model) if isinstance(m, nn.Conv2d)]
    assert isinstance(last, nn.ReLU) and list(model).index(last) == convs[-1] + 1


def test_last_conv_module_conv_bn_act_skips_batch_norm():
    model = make("custom", order="conv_bn_act", activation="elu")
    last = viz.last_conv_module(model)
    index = list(model).index(last)
    assert isinstance(last, nn.ELU) and isinstance(model[index - 1], nn.BatchNorm2d)


def test_last_conv_module_resnet18_is_layer4():
    model = shared("resnet18")
    assert viz.last_conv_module(model) is model.net.layer4
    assert viz.first_conv(model) is model.net.conv1


# ------------------------------------------------------------- filter grid ---

@pytest.mark.parametrize("name", ALL_MODELS)
def test_filter_grid_shape_every_model(name):
    filters, k = FIRST_CONV[name]
    rows, cols = viz.grid_shape(filters)
    grid = viz.filter_grid(shared(name), pad=1, upscale=4)
    assert grid.dtype == np.uint8
    assert grid.shape == (rows * (4 * k + 1) + 1, cols * (4 * k + 1) + 1, 3)


def test_filter_grid_near_square():
    assert viz.grid_shape(32) == (6, 6)
    assert viz.grid_shape(64) == (8, 8)
    assert viz.grid_shape(128) == (11, 12)
    assert viz.grid_shape(1) == (1, 1)


def test_filter_grid_each_filter_normalised_on_its_own():
    model = make("task1")
    with torch.no_grad():
        conv = viz.first_conv(model)
        conv.weight[1] *= 1000  # a filter of a far larger scale must not wash the others out
        conv.weight[2] = 0.3  # a constant filter has no contrast to stretch
    cut = tiles(viz.filter_grid(model, pad=2, upscale=3), 32, 15, 2)
    for i, tile in enumerate(cut):
        if i == 2:
            assert (tile == viz.MID_GREY).all()
        else:
            assert (tile.min(), tile.max()) == (0, 255), i


def test_filter_grid_tile_matches_weights():
    model = make("net1")
    weight = viz.first_conv(model).weight.detach()[5]  # 3×3×3
    tile = tiles(viz.filter_grid(model, pad=1, upscale=1), 32, 3, 1)[5]
    expected = (weight - weight.min()) / (weight.max() - weight.min()) * 255
    np.testing.assert_allclose(tile, expected.permute(1, 2, 0).numpy(), atol=0.5)


# ------------------------------------------------------------- activations ---

# (first, last) feature map shapes, with resnet18 at upsample 1.
ACTIVATION_SHAPES = {
    "task1": ((32, 32, 32), (128, 8, 8)),
    "net1": ((32, 32, 32), (128, 8, 8)),
    "net2": ((32, 32, 32), (128, 8, 8)),
    "resnet18": ((64, 16, 16), (128, 1, 1)),  # layer4 has 512 channels, capped at 128
    "custom": ((32, 32, 32), (128, 8, 8)),
}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_activations_shapes_every_model(name):
    image = random_image()
    maps = viz.activations(shared(name), image)
    first, last = ACTIVATION_SHAPES[name]
    assert maps["first"].shape == first and maps["last"].shape == last
    assert maps["first"].dtype == maps["last"].dtype == np.float32
    assert maps["input"].dtype == np.uint8
    np.testing.assert_array_equal(maps["input"], image.permute(1, 2, 0).numpy())


def test_activations_channel_cap():
    model = make("custom", filters=[16, 256], convs_per_block=1)
    assert viz.activations(model, random_image())["last"].shape == (128, 16, 16)
    small = viz.activations(model, random_image(), max_channels=8)
    assert small["first"].shape == (8, 32, 32) and small["last"].shape == (8, 16, 16)


def test_activations_first_is_after_activation():
    # task1's ReLU follows the conv directly: its maps can have no negative values.
    maps = viz.activations(shared("task1"), random_image())
    assert maps["first"].min() >= 0 and maps["first"].max() > 0


def test_activations_strided_last_block():
    model = make("custom", downsample="stride")
    assert viz.activations(model, random_image())["last"].shape == (128, 4, 4)


def test_activations_match_direct_forward():
    model = shared("task1")
    image = random_image(3)
    maps = viz.activations(model, image)
    x = (image.float() / 255 - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1)
    with torch.no_grad():
        expected = torch.relu(model[0](x.unsqueeze(0)))[0]
    np.testing.assert_allclose(maps["first"], expected.numpy(), rtol=1e-5, atol=1e-5)


def test_activations_restores_training_mode_and_removes_hooks():
    model = make("net1").train()
    viz.activations(model, random_image())
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_activations_rejects_float_image():
    with pytest.raises(ValueError, match="uint8"):
        viz.activations(shared("task1"), torch.zeros(3, 32, 32))


# ------------------------------------------------------------ channel grid ---

def test_channel_grid_shape_and_dtype():
    maps = np.random.default_rng(0).normal(size=(10, 8, 8)).astype(np.float32)
    grid = viz.channel_grid(maps, pad=1, upscale=2)
    assert grid.dtype == np.uint8 and grid.shape == (3 * 17 + 1, 4 * 17 + 1, 3)
    # Grey drawn as RGB: all three channels equal.
    assert (grid[..., 0] == grid[..., 1]).all() and (grid[..., 1] == grid[..., 2]).all()


def test_channel_grid_constant_channel_mid_grey():
    maps = np.random.default_rng(1).normal(size=(4, 5, 5)).astype(np.float32)
    maps[1] = 0.0  # a dead ReLU channel
    maps[2] *= 1e6
    cut = tiles(viz.channel_grid(maps, pad=1, upscale=1), 4, 5, 1)
    assert (cut[1] == viz.MID_GREY).all()
    for i in (0, 2, 3):
        assert (cut[i].min(), cut[i].max()) == (0, 255)


def test_channel_grid_nan_free_for_all_zero_maps():
    grid = viz.channel_grid(np.zeros((3, 4, 4), dtype=np.float32))
    assert grid.dtype == np.uint8  # no NaN cast warnings or garbage: mid grey on the background
    assert set(np.unique(grid)) == {viz.MID_GREY, viz.BACKGROUND}


# ------------------------------------------------------------------ to_png ---

def test_to_png_round_trips_rgb():
    array = rgb(7, 11)
    decoded = np.asarray(Image.open(io.BytesIO(viz.to_png(array))))
    np.testing.assert_array_equal(decoded, array)


def test_to_png_round_trips_grey():
    array = rgb(6, 9)[..., 0]
    image = Image.open(io.BytesIO(viz.to_png(array)))
    assert image.format == "PNG" and image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), array)


def test_to_png_rejects_float():
    with pytest.raises(ValueError, match="uint8"):
        viz.to_png(np.zeros((4, 4, 3)))


# ------------------------------------------------------------- layer table ---

def test_layer_table_task1_matches_study():
    rows = viz.layer_table(shared("task1"))
    assert [r["parameters"] for r in rows] == [2432, 51264, 204928, 131136, 650]
    assert sum(r["parameters"] for r in rows) == 390_410
    assert rows[0] == {"name": "0", "type": "Conv2d", "shape": "32x3x5x5", "weights": 2400, "biases": 32,
                       "parameters": 2432, "trainable": True, "formula": "3*32*5*5 + 32"}
    assert rows[3]["formula"] == "2048*64 + 64" and rows[3]["shape"] == "64x2048"
    assert [r["type"] for r in rows] == ["Conv2d"] * 3 + ["Linear"] * 2


@pytest.mark.parametrize("name", ALL_MODELS)
def test_layer_table_totals_every_model(name):
    model = shared(name)
    rows = viz.layer_table(model)
    assert sum(r["parameters"] for r in rows) == count_parameters(model)
    assert sum(r["parameters"] for r in rows if r["trainable"]) == count_parameters(model, trainable_only=True)
    for row in rows:
        assert row["parameters"] == row["weights"] + row["biases"]
        assert eval(row["formula"]) == row["parameters"]  # the formula is plain arithmetic


def test_layer_table_batch_norm_counts_weight_and_bias_only():
    rows = viz.layer_table(shared("net1"))
    bn = next(r for r in rows if r["type"] == "BatchNorm2d")
    assert (bn["weights"], bn["biases"], bn["parameters"], bn["formula"]) == (32, 32, 64, "32 + 32")


def test_layer_table_resnet18_frozen_layers():
    rows = {r["name"]: r for r in viz.layer_table(shared("resnet18"))}
    assert rows["net.conv1"]["trainable"] is False and rows["net.conv1"]["biases"] == 0
    assert rows["net.conv1"]["formula"] == "3*64*7*7"
    assert rows["net.fc"]["trainable"] is True and rows["net.fc"]["parameters"] == 5130


# -------------------------------------------------------- confusion matrix ---

class PixelOracle(nn.Module):
    """Predicts the class written into an image's top-left red pixel as value 20 * class."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixel = (x[:, 0, 0, 0] * CIFAR_STD[0] + CIFAR_MEAN[0]) * 255
        return nn.functional.one_hot(torch.round(pixel / 20).long(), 10).float() + self.anchor


def images_predicting(predicted: torch.Tensor) -> torch.Tensor:
    images = torch.zeros(len(predicted), 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0] = (predicted * 20).to(torch.uint8)
    return images


def test_confusion_matrix_counts_true_against_predicted():
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 10, (37,), generator=g)
    predicted = torch.randint(0, 10, (37,), generator=g)
    matrix = viz.confusion_matrix(PixelOracle(), images_predicting(predicted), truth, batch_size=8)
    expected = np.zeros((10, 10), dtype=np.int64)
    np.add.at(expected, (truth.numpy(), predicted.numpy()), 1)
    assert matrix.dtype == np.int64 and matrix.shape == (10, 10)
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.sum() == 37


def test_confusion_matrix_sums_to_n_real_model():
    model = shared("task1")
    images = torch.stack([random_image(i) for i in range(20)])
    matrix = viz.confusion_matrix(model, images, torch.arange(20) % 10, batch_size=6)
    assert matrix.sum() == 20 and (matrix.sum(axis=1) == 2).all()


def test_confusion_matrix_restores_training_mode():
    model = PixelOracle().train()
    viz.confusion_matrix(model, images_predicting(torch.tensor([1, 2])), torch.tensor([1, 2]))
    assert model.training


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="labels"):
        viz.confusion_matrix(PixelOracle(), images_predicting(torch.tensor([1])), torch.tensor([10]))


def test_per_class_accuracy_crafted_model():
    # A fixed prediction: every image is called class 3.
    truth = torch.tensor([3, 3, 3, 1, 1, 5])
    matrix = viz.confusion_matrix(PixelOracle(), images_predicting(torch.full((6,), 3)), truth)
    accuracy = viz.per_class_accuracy(matrix)
    expected = np.zeros(10)
    expected[3] = 1.0
    np.testing.assert_array_equal(accuracy, expected)


def test_per_class_accuracy_partial_and_empty_classes():
    matrix = np.array([[3, 1, 0], [2, 2, 0], [0, 0, 0]])
    np.testing.assert_allclose(viz.per_class_accuracy(matrix), [0.75, 0.5, 0.0])


# -------------------------------------------------------------- load_image ---

@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_load_image_accepts_format(fmt):
    tensor = viz.load_image(encode(rgb(48, 64), fmt))
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 32, 32)


def test_load_image_exact_pixels_png():
    array = rgb(32, 32)
    np.testing.assert_array_equal(viz.load_image(encode(array, "PNG")).permute(1, 2, 0).numpy(), array)


def test_load_image_converts_grey_and_rgba_to_rgb():
    assert viz.load_image(encode(rgb(40, 40)[..., 0], "PNG")).shape == (3, 32, 32)
    rgba = np.concatenate([rgb(40, 40), np.full((40, 40, 1), 255, np.uint8)], axis=2)
    assert viz.load_image(encode(rgba, "PNG")).shape == (3, 32, 32)


def test_load_image_keeps_aspect_by_centre_crop():
    # Left third red, middle third green, right third blue: a centre crop keeps only green.
    array = np.zeros((30, 90, 3), dtype=np.uint8)
    array[:, :30, 0] = array[:, 30:60, 1] = array[:, 60:, 2] = 255
    tensor = viz.load_image(encode(array, "PNG"))
    assert tensor[1].float().mean() > 250 and tensor[0].float().mean() < 5 and tensor[2].float().mean() < 5


def test_load_image_rejects_text_file():
    with pytest.raises(viz.ImageRejected, match="not a recognised image"):
        viz.load_image(b"hello, this is certainly not a picture\n" * 10)


def test_load_image_rejects_empty():
    with pytest.raises(viz.ImageRejected, match="empty"):
        viz.load_image(b"")


def test_load_image_rejects_truncated_png():
    data = encode(rgb(64, 64), "PNG")
    with pytest.raises(viz.ImageRejected, match="truncated"):
        viz.load_image(data[: len(data) // 2])


def test_load_image_rejects_oversize_dimensions():
    with pytest.raises(viz.ImageRejected, match="5000x10 pixels"):
        viz.load_image(encode(np.zeros((10, 5000, 3), dtype=np.uint8), "PNG"))


def test_load_image_rejects_over_5mb():
    with pytest.raises(viz.ImageRejected, match="at most 5 MB"):
        viz.load_image(b"\x89PNG" + bytes(5 * 1024 * 1024))


def test_load_image_rejects_gif():
    with pytest.raises(viz.ImageRejected, match="GIF images are not accepted"):
        viz.load_image(encode(rgb(16, 16)[..., 0], "GIF"))



def test_load_image_rejects_decompression_bomb_warning(monkeypatch):
    # 100×100 = 10,000 px lies between MAX_IMAGE_PIXELS and twice it: Pillow only warns; we refuse.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8_000)
    with pytest.raises(viz.ImageRejected, match="too many pixels"):
        viz.load_image(encode(rgb(100, 100), "PNG"))


def test_load_image_rejects_decompression_bomb_error(monkeypatch):
    # Over twice the limit Pillow raises DecompressionBombError itself.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(viz.ImageRejected, match="too many pixels"):
        viz.load_image(encode(rgb(100, 100), "PNG"))


def test_load_image_error_is_value_error():
    assert issubclass(viz.ImageRejected, ValueError)
