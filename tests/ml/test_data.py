"""ml.data: CIFAR pickles, image folders, the decode cache, splits and archive subsets.

Everything runs on files made here in tmp_path, except the archive tests, which
extract a small subset of the real JPEG CIFAR-10 beside the checkout.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import pickle
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.utils
from PIL import Image

import ml.data as data
from ml.config import ConfigError, DatasetSpec
from ml.data import (
    CIFAR10_CLASSES,
    IMAGE_EXTENSIONS,
    SPLITS,
    DatasetError,
    ImageSet,
    load_cifar10,
    load_imagefolder,
    load_splits,
    split_indices,
)

CIFAR_TRAIN_PER_BATCH = 6
CIFAR_TEST = 10


# ---------------------------------------------------------------------------
# Fixtures and helpers


def _write_pickle(path: Path, obj: object) -> None:
    # Protocol 2, like the original files (written by Python 2).
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _cifar_batch(rng: np.random.Generator, n: int, offset: int) -> dict[bytes, object]:
    return {
        b"batch_label": b"made by the tests",
        b"labels": [(offset + i) % 10 for i in range(n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{offset + i}.png".encode() for i in range(n)],
    }


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    """A data dir holding a tiny cifar-10-batches-py (5 x 6 train images, 10 test images)."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        _write_pickle(folder / f"data_batch_{i + 1}", _cifar_batch(rng, CIFAR_TRAIN_PER_BATCH, i * CIFAR_TRAIN_PER_BATCH))
    _write_pickle(folder / "test_batch", _cifar_batch(rng, CIFAR_TEST, 0))
    _write_pickle(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                            b"num_cases_per_batch": CIFAR_TRAIN_PER_BATCH})
    return tmp_path


def _save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _random_pixels(rng: np.random.Generator, h: int = 32, w: int = 32) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# Created in an order that is not the sorted one, so that the tests see the sorting.
FOLDER_CLASSES = ["dog", "ant", "cat"]


@pytest.fixture
def folder_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """An image folder of PNGs (3 classes, 4 train + 2 test each) and each file's pixels by relative path."""
    root = tmp_path / "folder"
    rng = np.random.default_rng(1)
    pixels = {}
    for split, count in (("train", 4), ("test", 2)):
        for cls in FOLDER_CLASSES:
            for i in range(count):
                rel = f"{split}/{cls}/{i:03d}.png"
                pixels[rel] = _random_pixels(rng)
                _save_png(root / rel, pixels[rel])
    return root, pixels


def _expected(pixels: dict[str, np.ndarray], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What loading `split` must give: images in (sorted class, sorted file) order and their labels."""
    classes = sorted(FOLDER_CLASSES)
    rels = sorted((r for r in pixels if r.startswith(split + "/")), key=lambda r: (r.split("/")[1], r))
    images = torch.stack([torch.from_numpy(pixels[r]).permute(2, 0, 1) for r in rels])
    labels = torch.tensor([classes.index(r.split("/")[1]) for r in rels])
    return images, labels


@pytest.fixture(autouse=True)
def home_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Loads without a cache_dir cache in $XDG_CACHE_HOME/trainboard: a folder of this test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "trainboard"


def _cache_files(root: Path) -> list[Path]:
    """The cache files written for loads without a cache_dir (never under `root`)."""
    assert not any(p.name.endswith(".pt") for p in root.rglob("*")), "a cache was written inside the data folder"
    return sorted((Path(os.environ["XDG_CACHE_HOME"]) / "trainboard").glob("*.pt"))


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although the cache should have been used")

    monkeypatch.setattr(data, "_decode_chunk", fail)


# ---------------------------------------------------------------------------
# CIFAR-10 pickles


def test_load_cifar10_reads_pickles_in_chw_order(cifar_root: Path) -> None:
    train, test = load_cifar10(cifar_root)

    assert train.classes == test.classes == CIFAR10_CLASSES
    assert train.images.shape == (5 * CIFAR_TRAIN_PER_BATCH, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (CIFAR_TEST, 3, 32, 32)
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == [i % 10 for i in range(5 * CIFAR_TRAIN_PER_BATCH)]
    # Pixel (c, y, x) of image i sits at row i, column c*1024 + y*32 + x of the batch's data.
    batch2 = pickle.loads((cifar_root / "cifar-10-batches-py/data_batch_2").read_bytes(), encoding="bytes")
    row = batch2[b"data"][1]
    image = train.images[CIFAR_TRAIN_PER_BATCH + 1]
    assert image[2, 5, 7].item() == row[2 * 1024 + 5 * 32 + 7]
    assert torch.equal(image.flatten(), torch.from_numpy(row))


def test_load_cifar10_numpy1_module_names(cifar_root: Path) -> None:
    # The original files were pickled by numpy 1, whose arrays name numpy.core (numpy 2: numpy._core).
    path = cifar_root / "cifar-10-batches-py/data_batch_1"
    blob = path.read_bytes()
    assert b"numpy._core.multiarray" in blob
    path.write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    train, _ = load_cifar10(cifar_root)
    assert len(train) == 5 * CIFAR_TRAIN_PER_BATCH


def test_load_cifar10_missing_names_folder_and_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_cifar10(tmp_path / "data")
    message = str(err.value)
    assert str(tmp_path / "data") in message
    assert "cifar-10-batches-py" in message and "download=true" in message


def test_load_cifar10_missing_one_batch_names_it(cifar_root: Path) -> None:
    (cifar_root / "cifar-10-batches-py/data_batch_4").unlink()
    with pytest.raises(DatasetError, match="data_batch_4"):
        load_cifar10(cifar_root)


def test_load_cifar10_download_offline_raises_dataset_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(url: str, download_root: str, **kwargs: object) -> None:
        calls.append((url, download_root, kwargs))
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(DatasetError) as err:
        load_cifar10(tmp_path, download=True)

    message = str(err.value)
    assert str(tmp_path) in message and "cifar-10-batches-py" in message and "no network" in message
    cifar = torchvision.datasets.CIFAR10
    assert calls == [(cifar.url, str(tmp_path), {"filename": cifar.filename, "md5": cifar.tgz_md5})]


def test_load_cifar10_download_skipped_when_present(cifar_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    train, _ = load_cifar10(cifar_root, download=True)
    assert len(train) == 5 * CIFAR_TRAIN_PER_BATCH


def test_load_cifar10_truncated_pickle_names_file(cifar_root: Path) -> None:
    path = cifar_root / "cifar-10-batches-py/data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="data_batch_3") as err:
        load_cifar10(cifar_root)
    assert str(path) in str(err.value)


def test_load_cifar10_foreign_pickle_not_executed(cifar_root: Path) -> None:
    marker = cifar_root / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    path = cifar_root / "cifar-10-batches-py/test_batch"
    _write_pickle(path, {b"data": Evil(), b"labels": []})
    with pytest.raises(DatasetError, match="test_batch"):
        load_cifar10(cifar_root)
    assert not marker.exists()


def test_load_cifar10_wrong_shape_names_file(cifar_root: Path) -> None:
    path = cifar_root / "cifar-10-batches-py/test_batch"
    _write_pickle(path, {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]})
    with pytest.raises(DatasetError, match="test_batch"):
        load_cifar10(cifar_root)


# ---------------------------------------------------------------------------
# Image folders


def test_load_imagefolder_pngs_match_files_and_sorted_classes(folder_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, pixels = folder_root
    train, test = load_imagefolder(root)

    assert train.classes == test.classes == ["ant", "cat", "dog"]
    for loaded, split in ((train, "train"), (test, "test")):
        images, labels = _expected(pixels, split)
        assert loaded.images.dtype == torch.uint8 and loaded.images.is_contiguous()
        assert torch.equal(loaded.images, images)
        assert torch.equal(loaded.labels, labels)


def test_load_imagefolder_resizes_and_converts_to_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    big = _random_pixels(rng, 40, 48)
    _save_png(tmp_path / "train/a/big.png", big)
    Image.fromarray(big[:, :, 0]).save(tmp_path / "train/a/grey.bmp")  # mode L, other format
    _save_png(tmp_path / "test/a/small.png", _random_pixels(rng, 16, 16))

    train, test = load_imagefolder(tmp_path, image_size=32)

    assert train.images.shape == (2, 3, 32, 32) and test.images.shape == (1, 3, 32, 32)
    resized = np.array(Image.fromarray(big).resize((32, 32), Image.Resampling.BILINEAR))
    assert torch.equal(train.images[0], torch.from_numpy(resized).permute(2, 0, 1))
    grey = train.images[1]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_load_imagefolder_jpegs_match_pillow(tmp_path: Path) -> None:
    # JPEGs take a faster decoder than Pillow; it must give the very same pixels.
    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        for i in range(3):
            path = tmp_path / split / "x" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_random_pixels(rng)).save(path, quality=90)
    train, _ = load_imagefolder(tmp_path)
    for i in range(3):
        with Image.open(tmp_path / "train" / "x" / f"{i}.jpg") as im:
            expected = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(train.images[i], expected)


def test_load_imagefolder_jpegs_without_torchvision_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Where torchvision has no JPEG op (it is deprecated there), Pillow decodes everything.
    rng = np.random.default_rng(3)
    root = tmp_path / "jpegs"
    for split in ("train", "test"):
        path = root / split / "x" / "0.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_random_pixels(rng)).save(path)
    fast, _ = load_imagefolder(root)
    for cache in _cache_files(root):
        cache.unlink()
    pillow_calls = []
    decode_image = data._decode_image
    monkeypatch.setattr(data, "_jpeg_op", lambda: None)
    monkeypatch.setattr(data, "_decode_image", lambda *a: pillow_calls.append(a) or decode_image(*a))
    slow, _ = load_imagefolder(root)
    assert len(pillow_calls) == 2
    assert torch.equal(fast.images, slow.images)


def test_load_imagefolder_garbage_jpg_names_file(folder_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = folder_root
    bad = root / "train/cat/zzz-broken.jpg"
    bad.write_bytes(b"this is not a jpeg" * 20)
    with pytest.raises(DatasetError) as err:
        load_imagefolder(root)
    assert str(bad) in str(err.value)


def test_load_imagefolder_truncated_png_names_file(folder_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = folder_root
    bad = root / "test/dog/001.png"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DatasetError) as err:
        load_imagefolder(root)
    assert str(bad) in str(err.value)


def test_load_imagefolder_missing_test_folder_names_it(tmp_path: Path) -> None:
    _save_png(tmp_path / "train/a/0.png", _random_pixels(np.random.default_rng(4)))
    with pytest.raises(DatasetError) as err:
        load_imagefolder(tmp_path)
    assert str(tmp_path / "test") in str(err.value) and "train/<class>" in str(err.value)


def test_load_imagefolder_missing_root_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        load_imagefolder(tmp_path / "nowhere")


def test_load_imagefolder_empty_class_names_folder(folder_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = folder_root
    (root / "train/empty").mkdir()
    (root / "test/empty").mkdir()
    with pytest.raises(DatasetError) as err:
        load_imagefolder(root)
    assert str(root / "train/empty") in str(err.value)


def test_load_imagefolder_test_classes_differ_error(folder_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = folder_root
    (root / "test/ant").rename(root / "test/bee")
    with pytest.raises(DatasetError) as err:
        load_imagefolder(root)
    message = str(err.value)
    assert str(root / "test") in message and "ant" in message and "bee" in message


# ---------------------------------------------------------------------------
# The decode cache


def test_load_imagefolder_cache_hit_skips_decoding(folder_root: tuple[Path, dict[str, np.ndarray]],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = folder_root
    first_train, first_test = load_imagefolder(root)
    cached = _cache_files(root)
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns

    _forbid_decoding(monkeypatch)
    train, test = load_imagefolder(root)

    assert torch.equal(train.images, first_train.images) and torch.equal(test.labels, first_test.labels)
    assert _cache_files(root) == cached and cached[0].stat().st_mtime_ns == mtime


def test_load_imagefolder_cache_invalidated_by_added_file(folder_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = folder_root
    first, _ = load_imagefolder(root)
    _save_png(root / "train/ant/new.png", _random_pixels(np.random.default_rng(5)))

    second, _ = load_imagefolder(root)

    assert len(second) == len(first) + 1
    assert len(_cache_files(root)) == 2


def test_load_imagefolder_cache_invalidated_by_changed_file(folder_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, pixels = folder_root
    first, _ = load_imagefolder(root)
    changed = root / "train/cat/002.png"
    old_mtime = changed.stat().st_mtime_ns
    new_pixels = _random_pixels(np.random.default_rng(6))
    _save_png(changed, new_pixels)
    # File systems with coarse timestamps could keep the old mtime: make it differ.
    os.utime(changed, ns=(old_mtime + 10**9, old_mtime + 10**9))

    second, _ = load_imagefolder(root)

    index = 4 + 2  # ant's 4 images, then cat/000 and cat/001
    assert torch.equal(second.images[index], torch.from_numpy(new_pixels).permute(2, 0, 1))
    assert not torch.equal(second.images[index], first.images[index])


def test_load_imagefolder_cache_invalidated_by_removed_file(folder_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = folder_root
    load_imagefolder(root)
    (root / "test/dog/000.png").unlink()
    _, test = load_imagefolder(root)
    assert len(test) == 5


def test_load_imagefolder_corrupt_cache_rebuilt(folder_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, pixels = folder_root
    load_imagefolder(root)
    [cache] = _cache_files(root)
    cache.write_bytes(b"not a torch file")

    train, _ = load_imagefolder(root)

    assert torch.equal(train.images, _expected(pixels, "train")[0])
    assert cache.stat().st_size > 1000  # rewritten with real tensors


def test_load_imagefolder_cache_in_cache_dir_never_in_data_folder(folder_root: tuple[Path, dict[str, np.ndarray]],
                                                                 tmp_path: Path, home_cache: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = folder_root
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    cache_dir = tmp_path / "data" / "cache"

    first, _ = load_imagefolder(root, cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.pt"))) == 1 and not home_cache.exists()
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before

    _forbid_decoding(monkeypatch)
    second, _ = load_imagefolder(root, cache_dir=cache_dir)
    assert torch.equal(first.images, second.images)


def test_load_imagefolder_unwritable_cache_dir_falls_back_to_home_cache(
        folder_root: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, home_cache: Path) -> None:
    root, _ = folder_root
    # A file where the cache folder should be stops even root, whom permission bits do not.
    blocked = tmp_path / "blocked"
    blocked.write_text("in the way")
    load_imagefolder(root, cache_dir=blocked)
    assert len(list(home_cache.glob("*.pt"))) == 1


def test_load_imagefolder_cache_key_depends_on_image_size(folder_root: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = folder_root
    small, _ = load_imagefolder(root, image_size=16)
    normal, _ = load_imagefolder(root)
    assert small.images.shape[-1] == 16 and normal.images.shape[-1] == 32
    assert len(_cache_files(root)) == 2


# ---------------------------------------------------------------------------
# Splits


def test_split_indices_deterministic_and_disjoint() -> None:
    train, val = split_indices(1000, 0.1, seed=7)
    again_train, again_val = split_indices(1000, 0.1, seed=7)
    other_train, other_val = split_indices(1000, 0.1, seed=8)

    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert not torch.equal(val, other_val)
    assert len(val) == 100 and len(train) == 900
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(1000))
    assert train.dtype == val.dtype == torch.int64


def test_split_indices_at_least_one_val() -> None:
    train, val = split_indices(5, 0.01, seed=0)
    assert len(val) == 1 and len(train) == 4


def test_split_indices_bad_arguments_error() -> None:
    with pytest.raises(ValueError):
        split_indices(10, 0.0, seed=0)
    with pytest.raises(ValueError):
        split_indices(1, 0.5, seed=0)


def test_image_set_subset_keeps_pairs() -> None:
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    full = ImageSet(images, torch.tensor([10, 11, 12, 13]), ["a"])
    part = full.subset(torch.tensor([3, 1]))
    assert part.labels.tolist() == [13, 11] and part.images[:, 0, 0, 0].tolist() == [3, 1]
    assert len(part) == 2 and part.classes == ["a"]


def _row_keys(images: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in images}


def test_load_splits_cifar10_uses_data_dir(cifar_root: Path) -> None:
    splits = load_splits(DatasetSpec(kind="cifar10"), data_dir=cifar_root, seed=0, val_fraction=0.2)

    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, CIFAR_TEST)
    assert splits.classes == CIFAR10_CLASSES
    assert splits.source == f"cifar10 {cifar_root} (24/6/{CIFAR_TEST})"
    assert not _row_keys(splits.train.images) & _row_keys(splits.val.images)


def test_load_splits_limits_are_seeded_subsets(cifar_root: Path, tmp_path: Path) -> None:
    spec = DatasetSpec(kind="cifar10", path=str(cifar_root), limit_train=20, limit_test=4)

    first = load_splits(spec, data_dir=tmp_path / "unused", seed=3, val_fraction=0.25)
    again = load_splits(spec, data_dir=tmp_path / "unused", seed=3, val_fraction=0.25)
    other = load_splits(spec, data_dir=tmp_path / "unused", seed=4, val_fraction=0.25)

    assert (len(first.train), len(first.val), len(first.test)) == (15, 5, 4)
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.val.labels, again.val.labels)
    assert not _row_keys(first.train.images) & _row_keys(first.val.images)
    pool = _row_keys(first.train.images) | _row_keys(first.val.images)
    assert pool != _row_keys(other.train.images) | _row_keys(other.val.images)
    # The test subset is the same whatever the run's seed, so runs stay comparable.
    assert torch.equal(first.test.images, other.test.images)
    _, full_test = load_cifar10(cifar_root)
    assert _row_keys(first.test.images) <= _row_keys(full_test.images)


def test_load_splits_imagefolder(folder_root: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    root, _ = folder_root
    spec = DatasetSpec(kind="imagefolder", path=str(root))
    splits = load_splits(spec, data_dir=tmp_path / "data", seed=0, val_fraction=0.25)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 6)
    assert splits.classes == ["ant", "cat", "dog"]
    assert splits.source.startswith(f"imagefolder {root} ")


def test_load_splits_invalid_spec_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_splits(DatasetSpec(kind="imagefolder"), data_dir=tmp_path, seed=0, val_fraction=0.1)


# ---------------------------------------------------------------------------
# Archive subsets
# Extracting the first N images per class of an image-folder .tar.gz: only tests use it
# (it builds the subsets below), so it lives here rather than in ml/data.py.

EXTRACT_MARKER = ".trainboard-extracted.json"



def _member_parts(member: tarfile.TarInfo) -> tuple[str, str, str, str] | None:
    """(top, split, class, file) of an image entry `<top>/<split>/<class>/<file>`, else None.

    Only plain names pass, so nothing can be written outside the destination.
    """
    parts = member.name.split("/")
    if not member.isfile() or len(parts) != 4 or parts[1] not in SPLITS:
        return None
    if any(p in ("", ".", "..") or p.startswith(".") or "\\" in p for p in parts):
        return None
    if os.path.splitext(parts[3])[1].lower() not in IMAGE_EXTENSIONS:
        return None
    return parts[0], parts[1], parts[2], parts[3]


def _write_member(fileobj: BinaryIO, folder: str, name: str, made: set[str]) -> None:
    # os.path rather than pathlib, and one makedirs per folder: this runs 60,000 times.
    if folder not in made:
        os.makedirs(folder, exist_ok=True)
        made.add(folder)
    with open(os.path.join(folder, name), "wb") as out:
        shutil.copyfileobj(fileobj, out)


def _stream_subset(archive: Path, into: Path, limits: dict[str, int | None]) -> str:
    """Write the first `limits[split]` files per class (by name) of `archive` under `into`; return the top folder.

    One pass over the gzip stream. The archive need not be sorted: a file that
    falls out of a class's first N is deleted again, and when the archive is
    sorted (as the shared one is) nothing past the first N is ever written.
    """
    kept: dict[tuple[str, str], list[str]] = {}
    tops: set[str] = set()
    made: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = _member_parts(member)
                if parts is None:
                    continue
                top, split, cls, name = parts
                names, limit = kept.setdefault((split, cls), []), limits[split]
                if limit is not None and len(names) >= limit and name > names[-1]:
                    continue
                fileobj = tar.extractfile(member)
                if fileobj is None:
                    continue
                folder = os.path.join(into, top, split, cls)
                _write_member(fileobj, folder, name, made)
                tops.add(top)
                i = bisect.bisect_left(names, name)
                if i == len(names) or names[i] != name:  # a repeated entry overwrites, like tar does
                    names.insert(i, name)
                if limit is not None and len(names) > limit:
                    os.unlink(os.path.join(folder, names.pop()))
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise DatasetError(f"cannot read archive {archive} ({type(exc).__name__}: {exc}). "
                           f"Check that it is a complete .tar.gz file.") from exc
    if len(tops) != 1 or {s for s, _ in kept} != set(SPLITS):
        raise DatasetError(f"archive {archive} is not laid out as <top>/train/<class>/<image> and "
                           f"<top>/test/<class>/<image> under a single top folder (found tops: "
                           f"{', '.join(sorted(tops)) or 'none'}).")
    return tops.pop()


def _extraction_request(archive: Path, train_per_class: int | None, test_per_class: int | None) -> dict[str, Any]:
    for name, value in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be None (all) or at least 1 (got {value})")
    return {"archive": archive.name, "archive_size": archive.stat().st_size,
            "train_per_class": train_per_class, "test_per_class": test_per_class}


def _completed_extraction(dest: Path, request: dict[str, Any]) -> Path | None:
    """The extracted root when `dest`'s marker records exactly this request, else None."""
    try:
        marker = json.loads((dest / EXTRACT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if {k: marker.get(k) for k in request} == request and marker.get("root"):
        root = dest / str(marker["root"])
        if root.is_dir():
            return root
        (dest / EXTRACT_MARKER).unlink(missing_ok=True)  # the tree was deleted since: extract again
        return None
    raise DatasetError(f"{dest} already holds a different extraction ({dest / EXTRACT_MARKER}: {marker}). "
                       f"Choose another destination folder or delete {dest}.")


def extract_imagefolder_subset(archive: str | Path, dest: str | Path, *,
                               train_per_class: int | None, test_per_class: int | None) -> Path:
    """Extract the first N images per class (by file name; None = all) of each split of `archive` into `dest`.

    `archive` is a .tar.gz laid out as `<top>/{train,test}/<class>/<image>`; the
    return value is `dest/<top>`, ready for `load_imagefolder`. Idempotent: the
    marker file is written last, so a later call with the same request returns
    at once, and an interrupted extraction (which only ever wrote to a temporary
    folder) is simply redone.
    """
    archive, dest = Path(archive).expanduser(), Path(dest).expanduser()
    if not archive.is_file():
        raise DatasetError(f"archive {archive} not found. Give the path of a .tar.gz laid out as "
                           f"<top>/train/<class>/<image> and <top>/test/<class>/<image>.")
    request = _extraction_request(archive, train_per_class, test_per_class)
    done = _completed_extraction(dest, request)
    if done is not None:
        return done

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".extracting-") as tmp:
        top = _stream_subset(archive, Path(tmp), {"train": train_per_class, "test": test_per_class})
        target = dest / top
        if target.exists():
            # Another process may have finished the same request meanwhile.
            done = _completed_extraction(dest, request)
            if done is not None:
                return done
            raise DatasetError(f"{target} already exists but is not a completed extraction of {archive}. "
                               f"Delete it or choose another destination folder.")
        os.replace(Path(tmp) / top, target)
    marker = dict(request, root=top)
    _write_text_atomically(dest / EXTRACT_MARKER, json.dumps(marker, indent=1))
    return target


def _write_text_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)



def _make_archive(path: Path, members: list[str]) -> None:
    """A .tar.gz holding a tiny PNG at each member name, in the given order."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, format="PNG")
    payload = buf.getvalue()
    with tarfile.open(path, "w:gz") as tar:
        for name in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_extract_imagefolder_subset_unsorted_archive_keeps_first_names(tmp_path: Path) -> None:
    names = [f"set/{split}/{cls}/{i}.png" for split in ("test", "train") for cls in ("b", "a") for i in (3, 1, 4, 0, 2)]
    archive = tmp_path / "set.tar.gz"
    _make_archive(archive, names + ["set/README.txt", "../evil/train/a/0.png"])

    root = extract_imagefolder_subset(archive, tmp_path / "out", train_per_class=2, test_per_class=3)

    assert root == tmp_path / "out/set"
    assert sorted(p.name for p in (root / "train/a").iterdir()) == ["0.png", "1.png"]
    assert sorted(p.name for p in (root / "test/b").iterdir()) == ["0.png", "1.png", "2.png"]
    assert not (tmp_path / "evil").exists()
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".extracting")] == []


def test_extract_imagefolder_subset_not_an_archive_names_it(tmp_path: Path) -> None:
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DatasetError, match="broken.tar.gz"):
        extract_imagefolder_subset(archive, tmp_path / "out", train_per_class=1, test_per_class=1)


@pytest.fixture(scope="module")
def real_archive(sample_subset: Callable[[int, int], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .tar.gz laid out like the real CIFAR-10 JPEG archive (`cifar10-jpeg/...`), of 25/8 real images per class."""
    archive = tmp_path_factory.mktemp("archive") / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(sample_subset(25, 8), arcname="cifar10-jpeg")
    return archive


@pytest.fixture(scope="module")
def small_subset(real_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("cifar-subset")
    return extract_imagefolder_subset(real_archive, dest, train_per_class=20, test_per_class=5)


def test_extract_imagefolder_subset_real_archive_layout(small_subset: Path) -> None:
    assert small_subset.name == "cifar10-jpeg"
    assert sorted(p.name for p in (small_subset / "train").iterdir()) == CIFAR10_CLASSES
    for cls in CIFAR10_CLASSES:
        assert sorted(p.name for p in (small_subset / "train" / cls).iterdir()) == [f"{i:04d}.jpg" for i in range(20)]
        assert len(list((small_subset / "test" / cls).iterdir())) == 5


def test_extract_imagefolder_subset_idempotent(small_subset: Path, real_archive: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def no_second_pass(*args: object, **kwargs: object) -> None:
        raise AssertionError("the archive was read again")

    monkeypatch.setattr(tarfile, "open", no_second_pass)
    again = extract_imagefolder_subset(real_archive, small_subset.parent, train_per_class=20, test_per_class=5)
    assert again == small_subset


def test_extract_imagefolder_subset_other_request_same_dest_error(small_subset: Path, real_archive: Path) -> None:
    with pytest.raises(DatasetError, match=str(small_subset.parent)):
        extract_imagefolder_subset(real_archive, small_subset.parent, train_per_class=30, test_per_class=5)


def test_load_imagefolder_real_subset_labels_match_folders(small_subset: Path) -> None:
    train, test = load_imagefolder(small_subset)

    assert train.classes == CIFAR10_CLASSES
    assert train.labels.bincount().tolist() == [20] * 10 and test.labels.bincount().tolist() == [5] * 10
    for split, images, per_class in (("train", train.images, 20), ("test", test.images, 5)):
        for label, cls in enumerate(CIFAR10_CLASSES):
            with Image.open(small_subset / split / cls / "0003.jpg") as im:
                expected = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
            assert torch.equal(images[label * per_class + 3], expected)


# ---------------------------------------------------------------------------
# The built-in sample and fingerprints


def test_sample_root_holds_500_train_100_test_real_jpegs_per_class() -> None:
    classes, counts = data.imagefolder_counts(data.sample_root())
    assert classes == CIFAR10_CLASSES
    assert counts == {"train": [500] * 10, "test": [100] * 10}
    files = list(data.sample_root().rglob("*.jpg"))
    assert max(p.stat().st_size for p in files) < 6 * 1024**2
    readme = (data.sample_root() / "README.md").read_text()
    assert f"{sum(p.stat().st_size for p in files):,} bytes" in readme and "first 500 files by name" in readme


def test_dataset_fingerprint_follows_content_not_location(folder_root: tuple[Path, dict[str, np.ndarray]],
                                                          tmp_path: Path) -> None:
    import shutil

    root, _ = folder_root
    copy = shutil.copytree(root, tmp_path / "copy")
    assert data.dataset_fingerprint(root) == data.dataset_fingerprint(copy)
    _save_png(copy / "train/ant/000.png", _random_pixels(np.random.default_rng(42)))
    assert data.dataset_fingerprint(root) != data.dataset_fingerprint(copy)
    (copy / "train/ant/000.png").unlink()
    assert data.dataset_fingerprint(root) != data.dataset_fingerprint(copy)
