"""Datasets as whole uint8 tensors: CIFAR-10 pickles, image folders and splits.

Everything here ends in an `ImageSet` (uint8 N×3×H×W images plus int64 labels on
the CPU); normalisation, batching and augmentation happen later, in
`ml.batching`. Every failure a user can cause (a missing folder, a corrupt file)
is a `DatasetError` whose message names the file or folder at fault and says
what to do about it, because it ends up verbatim in the dashboard and the CLI.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import pickle
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ml.config import ConfigError, DatasetSpec, validate
from ml.files import atomic_write

log = logging.getLogger(__name__)

CIFAR10_CLASSES: list[str] = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST_FILE = "test_batch"
CIFAR_META_FILE = "batches.meta"
CIFAR_SIDE = 32

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
IMAGEFOLDER_LAYOUT = "<root>/train/<class>/*.png|jpg|jpeg|webp|bmp and <root>/test/<class>/*"
SPLITS = ("train", "test")

# Bump when the cache's content or layout changes, so old cache files stop matching.
CACHE_FORMAT_VERSION = 1
CACHE_FOLDER = "cache"  # under the app's DATA_DIR; never inside a user's data folder
DECODE_CHUNK = 512  # images per thread-pool task: big enough to amortise the task overhead

# A test subset is drawn with a fixed seed rather than the run's seed, so that runs
# with different seeds but the same limit_test are scored on the same images.
TEST_SUBSET_SEED = 0


SAMPLE_NAME = "cifar10-sample"


def sample_root() -> Path:
    """The built-in `cifar10-sample` (500 train + 100 test real CIFAR-10 JPEGs per class), installed with `ml`."""
    return Path(__file__).resolve().parent / "sample" / SAMPLE_NAME


class DatasetError(RuntimeError):
    """Data that cannot be loaded; the message names the file or folder at fault and the fix."""


# ---------------------------------------------------------------------------
# Containers


@dataclass
class ImageSet:
    """A whole dataset split in memory: uint8 N×3×H×W images and int64 labels, on the CPU."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        # Checked here once, so that a malformed set fails where it is built,
        # not deep inside a training step.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 N×3×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must be int64 of shape ({len(self.images)},), "
                             f"got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        """The images at `index` (int64 indices or a bool mask), in that order."""
        return ImageSet(self.images[index], self.labels[index], list(self.classes))


@dataclass
class Splits:
    """Train/val/test sets ready for `ml.batching`, plus a description for logs and the UI."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: list[str]
    source: str


# ---------------------------------------------------------------------------
# CIFAR-10 in torchvision's pickle format


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that only builds numpy arrays: a data folder is not trusted code."""

    ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        # The original files (pickled by numpy 1) name numpy.core, which numpy 2 renamed
        # numpy._core; accept either spelling and import whichever this numpy has.
        canonical = module.replace("numpy.core", "numpy._core", 1) if module.startswith("numpy.core.") else module
        if (canonical, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        for candidate in dict.fromkeys([canonical, canonical.replace("numpy._core", "numpy.core", 1)]):
            try:
                return super().find_class(candidate, name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"this numpy has no {module}.{name}")


def _cifar_error(path: Path, problem: str) -> DatasetError:
    return DatasetError(f"{path}: {problem}. Replace the folder {path.parent} with a fresh copy of "
                        f"{CIFAR_FOLDER}, or delete it and load with download=true.")


def _unpickle(path: Path) -> dict[Any, Any]:
    """One CIFAR pickle as a dict with str keys (the files store bytes keys)."""
    try:
        with open(path, "rb") as f:
            data = _CifarUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}. Check the file's permissions.") from exc
    except Exception as exc:  # a truncated or foreign pickle fails in many ways, all meaning "corrupt"
        raise _cifar_error(path, f"corrupt or truncated file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise _cifar_error(path, f"expected a dict, found {type(data).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def read_cifar_batch(path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 N×3×32×32) and labels (int64) of one CIFAR batch file."""
    batch = _unpickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * CIFAR_SIDE**2:
        raise _cifar_error(path, "'data' is not a uint8 array of N rows of 3072 pixels")
    if labels is None or len(labels) != len(data):
        raise _cifar_error(path, f"'labels' does not hold one label per image ({len(data)} images)")
    label_tensor = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if len(label_tensor) and (label_tensor.min() < 0 or label_tensor.max() >= num_classes):
        raise _cifar_error(path, f"labels outside 0..{num_classes - 1}")
    # Rows are stored channel-major (1024 R, 1024 G, 1024 B), i.e. already CHW.
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).copy())
    return images, label_tensor


def _read_cifar_classes(path: Path) -> list[str]:
    names = _unpickle(path).get("label_names")
    if not isinstance(names, list) or not names:
        raise _cifar_error(path, "no 'label_names' list")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def missing_cifar_files(folder: Path) -> list[str]:
    needed = [*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE, CIFAR_META_FILE]
    return [name for name in needed if not (folder / name).is_file()]


def download_cifar10(root: Path) -> None:
    """Download and unpack the official archive into `root` with torchvision's own code."""
    # Imported here so that importing ml.data stays cheap; looked up on the module
    # at call time so that tests can replace it (there is no network in CI).
    import torchvision.datasets.utils as tv_utils
    from torchvision.datasets import CIFAR10

    try:
        root.mkdir(parents=True, exist_ok=True)
        tv_utils.download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except (OSError, RuntimeError, tarfile.TarError) as exc:  # URLError is an OSError; a bad md5 a RuntimeError
        raise DatasetError(
            f"downloading CIFAR-10 into {root} failed ({type(exc).__name__}: {exc}). Without network access, "
            f"put the {CIFAR_FOLDER} folder (from {CIFAR10.filename}) in {root} yourself."
        ) from exc


def load_cifar10(root: str | Path, download: bool = False) -> tuple[ImageSet, ImageSet]:
    """(train, test) of CIFAR-10 from `<root>/cifar-10-batches-py`, downloading it first if asked."""
    root = Path(root).expanduser()
    folder = root / CIFAR_FOLDER
    missing = missing_cifar_files(folder)
    if missing and download:
        download_cifar10(root)
        missing = missing_cifar_files(folder)
    if missing:
        raise DatasetError(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}. Put the {CIFAR_FOLDER} folder "
            f"(the python version of CIFAR-10) in {root}, or set download=true to download it there."
        )
    classes = _read_cifar_classes(folder / CIFAR_META_FILE)
    parts = [read_cifar_batch(folder / name, len(classes)) for name in CIFAR_TRAIN_FILES]
    train = ImageSet(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), classes)
    test = ImageSet(*read_cifar_batch(folder / CIFAR_TEST_FILE, len(classes)), classes)
    return train, test


# ---------------------------------------------------------------------------
# Image folders


@dataclass
class _FileList:
    """The image files of one split, in label order, with what the cache key needs.

    Plain strings rather than Path objects: pathlib costs about 10 µs a path,
    which at 60,000 files would be most of a cached load.
    """

    paths: list[str]   # absolute, for decoding
    rels: list[str]    # relative to the dataset root, for the cache key
    labels: list[int]
    stats: list[tuple[int, int]]  # (size, mtime_ns)


def _visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    # Hidden entries (.DS_Store, .ipynb_checkpoints, our own cache) are never data.
    # os.scandir, not Path.iterdir: its entries know their type without a stat call,
    # which matters at 60,000 files.
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _class_names(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DatasetError(f"image folder dataset: {split_dir} is not a folder. Expected layout: {IMAGEFOLDER_LAYOUT}.")
    return [e.name for e in _visible_entries(split_dir) if e.is_dir()]


def _check_test_classes(test_dir: Path, classes: list[str]) -> None:
    found = _class_names(test_dir)
    if found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise DatasetError(
            f"image folder dataset: the class folders of {test_dir} differ from those of train/ "
            f"(missing: {', '.join(missing) or 'none'}; extra: {', '.join(extra) or 'none'}). "
            f"Give test/ exactly one folder per training class."
        )


def _list_split(split_dir: Path, classes: list[str]) -> _FileList:
    files = _FileList([], [], [], [])
    for label, name in enumerate(classes):
        images = [e for e in _visible_entries(split_dir / name)
                  if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()]
        if not images and split_dir.name == "train":
            raise DatasetError(f"image folder dataset: no images in {split_dir / name}. Expected layout: "
                               f"{IMAGEFOLDER_LAYOUT}; remove the folder if the class is unused.")
        for entry in images:
            st = entry.stat()
            files.paths.append(entry.path)
            files.rels.append(f"{split_dir.name}/{name}/{entry.name}")
            files.labels.append(label)
            files.stats.append((st.st_size, st.st_mtime_ns))
    if not files.paths:
        raise DatasetError(f"image folder dataset: no images in {split_dir}. Expected layout: {IMAGEFOLDER_LAYOUT}.")
    return files


def _decode_image(path: str, image_size: int) -> torch.Tensor:
    """One image as uint8 3×S×S RGB with Pillow, resized (bilinear) to image_size square when it isn't."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        if rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
    except Exception as exc:  # Pillow's plugins raise many exception types for malformed files
        raise DatasetError(f"cannot read image {path} ({type(exc).__name__}: {exc}). "
                           f"Replace or delete the file.") from exc


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@functools.cache
def _jpeg_op() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchvision's libjpeg-turbo decoder as a bytes-tensor → uint8 3×H×W RGB function, or None.

    For 32 px JPEGs Pillow's per-image Python overhead dominates (about 110 µs an
    image, holding the GIL), while this op takes about 35 µs and gives
    byte-identical pixels (both wrap libjpeg-turbo). The op is called directly
    rather than through `torchvision.io.decode_jpeg`, which since torchvision 0.29
    warns on every call that it is deprecated; where a torchvision lacks the op,
    None sends every image to Pillow.
    """
    try:
        from torchvision.io.image import ImageReadMode  # importing this module loads the op library

        op, rgb = torch.ops.image.decode_jpeg, ImageReadMode.RGB.value
    except Exception:
        return None
    return lambda data: op(data, rgb, False)


def _decode_fast(path: str, image_size: int) -> torch.Tensor | None:
    """A JPEG of exactly image_size square through torchvision's op; None leaves the image to Pillow."""
    op = _jpeg_op()
    if op is None or os.path.splitext(path)[1].lower() not in (".jpg", ".jpeg"):
        return None
    try:
        image = op(torch.frombuffer(bytearray(_read_bytes(path)), dtype=torch.uint8))
    except Exception:  # Pillow then names the bad file in its error
        return None
    return image if image.shape == (3, image_size, image_size) else None


def _decode_chunk(paths: list[str], out: torch.Tensor, image_size: int) -> None:
    """Decode `paths` into `out` (uint8 n×3×S×S)."""
    for i, path in enumerate(paths):
        image = _decode_fast(path, image_size)
        out[i] = image if image is not None else _decode_image(path, image_size)


def _decode_all(paths: list[str], image_size: int) -> torch.Tensor:
    """uint8 N×3×S×S of every image, decoded in chunks on a thread pool.

    The pool pays off for large images, whose decoding and resizing run in
    Pillow's C code without the GIL, and on a cold disk; for CIFAR's tiny JPEGs,
    which are GIL-bound, it measured neither faster nor slower than one thread.
    """
    out = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    starts = range(0, len(paths), DECODE_CHUNK)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(_decode_chunk, paths[s:s + DECODE_CHUNK], out[s:s + DECODE_CHUNK], image_size)
                   for s in starts]
        try:
            for future in futures:
                future.result()  # re-raises the first DatasetError in file order
        except BaseException:
            for future in futures:  # don't decode the rest of a dataset that already failed
                future.cancel()
            raise
    return out


def _cache_key(image_size: int, lists: dict[str, _FileList]) -> str:
    """A hash of everything the decoded tensors depend on: any changed, added or removed file changes it."""
    digest = hashlib.sha256(f"trainboard-imagefolder v{CACHE_FORMAT_VERSION} size={image_size}\n".encode())
    for split in SPLITS:
        files = lists[split]
        for rel, label, (size, mtime_ns) in zip(files.rels, files.labels, files.stats):
            digest.update(f"{rel}\t{label}\t{size}\t{mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def user_cache_dir() -> Path:
    """The user's own cache folder for decoded datasets: `$XDG_CACHE_HOME/trainboard` (the CLI's)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "trainboard"


def _cache_dirs(cache_dir: str | Path | None) -> list[Path]:
    """Where a cache may live, in order of preference: `cache_dir`, then the user's cache folder.

    Never beside the data: a user's folder (or the installed sample) is read, not written.
    """
    dirs = [*([Path(cache_dir).expanduser()] if cache_dir else []), user_cache_dir()]
    return list(dict.fromkeys(dirs))


def _read_cache(path: Path, classes: list[str]) -> tuple[ImageSet, ImageSet] | None:
    """The cached sets, or None when the file is missing, corrupt or stale in any way."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        if blob["format"] != CACHE_FORMAT_VERSION or blob["classes"] != classes:
            return None
        return (ImageSet(blob["train_images"], blob["train_labels"], classes),
                ImageSet(blob["test_images"], blob["test_labels"], classes))
    except Exception as exc:  # a cache is disposable: anything wrong with it just means "rebuild"
        log.warning("ignoring unreadable cache %s (%s); decoding again", path, exc)
        return None


def _write_cache(dirs: list[Path], key: str, train: ImageSet, test: ImageSet) -> None:
    blob = {"format": CACHE_FORMAT_VERSION, "classes": train.classes,
            "train_images": train.images, "train_labels": train.labels,
            "test_images": test.images, "test_labels": test.labels}
    for folder in dirs:
        try:
            with atomic_write(folder / f"{key}.pt") as file:
                torch.save(blob, file)
            return
        except OSError as exc:  # read-only data folder, full disk: try the next place
            log.info("cannot write a cache in %s (%s)", folder, exc)
    log.warning("could not write a dataset cache in any of %s; the next load decodes again",
                ", ".join(map(str, dirs)))


def load_imagefolder(root: str | Path, cache_dir: str | Path | None = None,
                     image_size: int = 32) -> tuple[ImageSet, ImageSet]:
    """(train, test) from `<root>/train/<class>/*` and `<root>/test/<class>/*`, decoded once then cached.

    The cache goes to `cache_dir` (the app passes DATA_DIR/cache), else to
    `$XDG_CACHE_HOME/trainboard`; nothing is ever written under `root`.

    Labels are the indices of the sorted class folder names of train/.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"image folder dataset: {root} is not a folder. Expected layout: {IMAGEFOLDER_LAYOUT}.")
    classes = _class_names(root / "train")
    if not classes:
        raise DatasetError(f"image folder dataset: no class folders in {root / 'train'}. "
                           f"Expected layout: {IMAGEFOLDER_LAYOUT}.")
    _check_test_classes(root / "test", classes)
    lists = {split: _list_split(root / split, classes) for split in SPLITS}

    key = _cache_key(image_size, lists)
    dirs = _cache_dirs(cache_dir)
    for folder in dirs:
        cached = _read_cache(folder / f"{key}.pt", classes)
        if cached is not None:
            return cached

    log.info("decoding %d images from %s (cached for the next load)", sum(len(f.paths) for f in lists.values()), root)
    train, test = (ImageSet(_decode_all(lists[s].paths, image_size),
                            torch.tensor(lists[s].labels, dtype=torch.int64), classes) for s in SPLITS)
    _write_cache(dirs, key, train, test)
    return train, test


def imagefolder_counts(root: str | Path) -> tuple[list[str], dict[str, list[int]]]:
    """(classes, {split: images per class}) of an image folder, without decoding anything."""
    root = Path(root)
    classes = _class_names(root / "train")
    if not classes:
        raise DatasetError(f"image folder dataset: no class folders in {root / 'train'}. "
                           f"Expected layout: {IMAGEFOLDER_LAYOUT}.")
    _check_test_classes(root / "test", classes)
    counts = {}
    for split in SPLITS:
        labels = _list_split(root / split, classes).labels
        counts[split] = [labels.count(i) for i in range(len(classes))]
    return classes, counts


def _fingerprint_files(root: Path) -> list[tuple[str, str]]:
    """(relative name, absolute path) of every file a dataset at `root` is made of, in a fixed order."""
    folder = root / CIFAR_FOLDER
    if not missing_cifar_files(folder):
        return [(name, str(folder / name)) for name in sorted([*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE, CIFAR_META_FILE])]
    classes = _class_names(root / "train")
    files = [_list_split(root / split, classes) for split in SPLITS]
    return [(rel, path) for f in files for rel, path in zip(f.rels, f.paths)]


@functools.lru_cache(maxsize=64)
def _fingerprint_of(listing: tuple[tuple[str, str, int, int], ...]) -> str:
    digest = hashlib.sha256(b"trainboard-dataset v1\n")
    for rel, path, _size, _mtime in listing:
        digest.update(f"{rel}\n".encode())
        digest.update(hashlib.sha256(_read_bytes(path)).digest())
    return digest.hexdigest()[:16]


def dataset_fingerprint(root: str | Path) -> str:
    """A hash of every data file's name and bytes (CIFAR-10 pickles, or an image folder's images).

    Two folders with the same images in the same class folders get the same
    fingerprint wherever they are; any changed, added or removed image changes it.
    Remembered per process while no file's size or mtime changes (the full JPEG
    CIFAR-10 takes about a second to hash).
    """
    listing = []
    for rel, path in _fingerprint_files(Path(root)):
        st = os.stat(path)
        listing.append((rel, path, st.st_size, st.st_mtime_ns))
    return _fingerprint_of(tuple(listing))


# ---------------------------------------------------------------------------
# Splits


def _seeded_permutation(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return torch.randperm(n, generator=g)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): a seeded random split of range(n), val = round(n * val_fraction), at least 1.

    Both index lists are sorted; the same (n, val_fraction, seed) always gives the same split.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (got {val_fraction})")
    if n < 2:
        raise ValueError(f"need at least 2 images to split into train and val (got {n})")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    perm = _seeded_permutation(n, seed)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _seeded_subset(images: ImageSet, limit: int | None, seed: int) -> ImageSet:
    """At most `limit` images chosen at random with `seed`, kept in their original order."""
    if limit is None or limit >= len(images):
        return images
    return images.subset(_seeded_permutation(len(images), seed)[:limit].sort().values)


def load_splits(spec: DatasetSpec, *, data_dir: str | Path, seed: int, val_fraction: float,
                cache_dir: str | Path | None = None) -> Splits:
    """Load `spec`'s data and cut it into train/val/test.

    `data_dir` is where CIFAR-10 lives when the spec gives no path; image folders
    cache their decoded tensors in `cache_dir` (default `data_dir/cache`).
    With `spec.limit_train`, a seeded subset of that many training images is drawn
    first and then split, so the val set comes out of the same pool.
    """
    validate(spec)
    data_dir = Path(data_dir).expanduser()
    if spec.name == SAMPLE_NAME and not spec.path:
        spec = dataclasses.replace(spec, kind="imagefolder", path=str(sample_root()))
    if spec.kind == "cifar10":
        where = Path(spec.path).expanduser() if spec.path else data_dir
        train_full, test_full = load_cifar10(where, download=spec.download)
    elif spec.kind == "imagefolder":
        where = Path(spec.path or "").expanduser()
        train_full, test_full = load_imagefolder(where, cache_dir=cache_dir or data_dir / CACHE_FOLDER)
    else:  # unreachable after validate(), kept for type checkers and future kinds
        raise ConfigError({"kind": f"unknown dataset kind {spec.kind!r}"})

    pool = _seeded_subset(train_full, spec.limit_train, seed)
    if len(pool) < 2:
        raise DatasetError(f"{where}: {len(pool)} training image(s); at least 2 are needed for a train/val split.")
    train_idx, val_idx = split_indices(len(pool), val_fraction, seed)
    test = _seeded_subset(test_full, spec.limit_test, TEST_SUBSET_SEED)
    train, val = pool.subset(train_idx), pool.subset(val_idx)
    source = f"{spec.kind} {where} ({len(train)}/{len(val)}/{len(test)})"
    return Splits(train=train, val=val, test=test, classes=list(train_full.classes), source=source)
