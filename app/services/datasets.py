"""Datasets: what the workers can train on, where a run's data is, and checks before queueing.

Three kinds of dataset are listed by name:
- `cifar10-sample`: built in (package data of `ml`), always there;
- `cifar10`: torchvision's pickles in DATASETS_DIR, present or downloadable;
- image folders: `DATASETS_DIR/<name>/{train,test}/<class>/*` (uploaded or put there by hand).

A run names its dataset (`dataset.name`) or gives a path. Every path is confined
to DATASETS_DIR, the built-in sample and DATASET_ROOTS; `resolve_dataset` is the
one function that turns a run's dataset into a spec with an absolute path, used
by the launch checks, the worker and the visualisations alike.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.config import Settings
from app.services import dataset_uploads
from app.services.dataset_base import (
    BUILTIN_NAMES,
    CIFAR10_NAME,
    NAME_PATTERN,
    RESERVED_FOLDERS,
    SAMPLE_NAME,
    DatasetInfo,
    check_name,
)
from app.services.errors import Conflict, InvalidInput, Loc, NotFound

if TYPE_CHECKING:
    from sqlmodel import Session

    from ml.config import DatasetSpec
    from ml.data import Splits

OUTSIDE_ROOTS = "outside the allowed dataset roots"
# The launch form's epochs on the sample: task1 then trains in about a minute on 2 CPU cores
# (docs/benchmarks.md, "First run on the sample").
SAMPLE_FORM_EPOCHS = 5


# ---------------------------------------------------------------- paths ---

def sample_root() -> Path:
    from ml.data import sample_root as root

    return root()


def allowed_roots(settings: Settings) -> list[Path]:
    """Where dataset paths may resolve: DATASETS_DIR, the built-in sample, DATASET_ROOTS."""
    assert settings.DATASETS_DIR is not None
    return [settings.DATASETS_DIR, sample_root(), *settings.DATASET_ROOTS]


def confine_path(path: str, *, settings: Settings, loc: Loc = ("dataset", "path")) -> Path:
    """`path` resolved (relative ones inside DATASETS_DIR), or 422 when it lands outside every allowed root.

    Symlinks are followed before the check, so a link cannot lead out. The
    message is the same whether or not the path exists.
    """
    assert settings.DATASETS_DIR is not None
    try:
        candidate = Path(path).expanduser()
        resolved = (candidate if candidate.is_absolute() else settings.DATASETS_DIR / candidate).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        raise InvalidInput([(loc, OUTSIDE_ROOTS)]) from None
    if not any(resolved == root or resolved.is_relative_to(root) for root in allowed_roots(settings)):
        raise InvalidInput([(loc, f"{OUTSIDE_ROOTS}: allowed are DATASETS_DIR and DATASET_ROOTS")])
    return resolved


def folder_of(name: str, settings: Settings) -> Path:
    """Where dataset `name` lives (it need not exist)."""
    assert settings.DATASETS_DIR is not None
    if name == SAMPLE_NAME:
        return sample_root()
    if name == CIFAR10_NAME:
        return settings.DATASETS_DIR
    return settings.DATASETS_DIR / check_name(name)


def resolve_dataset(dataset: dict[str, Any], *, settings: Settings, loc: Loc = ("dataset",)) -> DatasetSpec:
    """A run's stored (or requested) dataset as a DatasetSpec whose path is absolute and confined.

    The one place that maps a dataset to files: a name wins over kind and path;
    CIFAR-10 without a path is DATASETS_DIR; a CIFAR-10 download goes only there.
    InvalidInput (field-level) for an unknown name or a path outside the roots.
    """
    from ml.config import ConfigError, DatasetSpec, from_dict

    try:
        spec: DatasetSpec = from_dict(DatasetSpec, dataset)
    except ConfigError as err:
        raise InvalidInput([((*loc, key), message) for key, message in err.errors.items()]) from None
    assert settings.DATASETS_DIR is not None
    if spec.name:
        check_name(spec.name, (*loc, "name"))
        kind = "cifar10" if spec.name == CIFAR10_NAME else "imagefolder"
        # Confined like any path: a symlink put into DATASETS_DIR must not lead out of the roots.
        path = confine_path(str(folder_of(spec.name, settings)), settings=settings, loc=(*loc, "name"))
        return dataclasses.replace(spec, kind=kind, path=str(path))
    if spec.kind == "cifar10":
        path = confine_path(spec.path, settings=settings, loc=(*loc, "path")) if spec.path else settings.DATASETS_DIR
        if spec.download and path != settings.DATASETS_DIR:
            raise InvalidInput([((*loc, "download"), "CIFAR-10 downloads only into DATASETS_DIR: leave path empty")])
        return dataclasses.replace(spec, path=str(path))
    if spec.path:
        return dataclasses.replace(spec, path=str(confine_path(spec.path, settings=settings, loc=(*loc, "path"))))
    return spec


def dataset_name_of(spec: DatasetSpec, settings: Settings) -> str | None:
    """The name a resolved spec is listed under, or None for a path outside the list (runs keep the path)."""
    if spec.name:
        return spec.name
    path = Path(spec.path or "")
    if spec.kind == "cifar10" and path == settings.DATASETS_DIR:
        return CIFAR10_NAME
    if path == sample_root():
        return SAMPLE_NAME
    if settings.DATASETS_DIR is not None and path.parent == settings.DATASETS_DIR and _is_listed_folder(path):
        return path.name
    return None


def load_run_splits(run: Any, *, settings: Settings) -> tuple[DatasetSpec, Splits]:
    """(spec, splits) of a run's data exactly as its worker trains on it (the worker and visualize both call this).

    Raises DatasetError or ConfigError (InvalidInput's cause) for data that cannot be loaded.
    """
    from ml.config import ConfigError, TrainConfig, from_dict
    from ml.data import load_splits

    config = from_dict(TrainConfig, run.hyperparameters)
    try:
        spec = resolve_dataset(run.dataset, settings=settings)
    except InvalidInput as err:
        raise ConfigError({".".join(map(str, loc)): message for loc, message in err.errors}) from None
    assert settings.DATASETS_DIR is not None
    splits = load_splits(spec, data_dir=settings.DATASETS_DIR, seed=config.seed,
                         val_fraction=config.val_fraction, cache_dir=settings.cache_dir)
    return spec, splits


# ----------------------------------------------------------- launch checks ---

def default_dataset(settings: Settings) -> str:
    """What a launch without a dataset trains on: the full CIFAR-10 when present, else the sample."""
    return CIFAR10_NAME if cifar10_present(settings) else SAMPLE_NAME


def cifar10_present(settings: Settings) -> bool:
    from ml.data import CIFAR_FOLDER, missing_cifar_files

    assert settings.DATASETS_DIR is not None
    return not missing_cifar_files(settings.DATASETS_DIR / CIFAR_FOLDER)


def _split_sizes(spec: DatasetSpec) -> tuple[int, int] | None:
    """(train, test) image counts of a resolved spec, or None when the data is not there."""
    from ml.data import CIFAR_FOLDER, DatasetError, missing_cifar_files, imagefolder_counts

    path = Path(spec.path or "")
    if spec.kind == "cifar10":
        return None if missing_cifar_files(path / CIFAR_FOLDER) else (50_000, 10_000)
    try:
        _, counts = imagefolder_counts(path)
    except (DatasetError, OSError):
        return None
    return sum(counts["train"]), sum(counts["test"])


def check_before_queue(spec: DatasetSpec, hyperparameters: dict[str, Any], *, loc: Loc = ("dataset",)
                       ) -> list[tuple[Loc, str]]:
    """Field errors for data that is missing, empty, or smaller than one batch (as far as this process sees)."""
    path = Path(spec.path or "")
    if spec.kind == "cifar10":
        sizes = _split_sizes(spec)
        if sizes is None:
            if spec.download:
                return []
            return [((*loc, "name" if spec.name else "kind"),
                     f"CIFAR-10 is not in {path}: set download=true (online), put cifar-10-batches-py there, "
                     f"or choose the built-in {SAMPLE_NAME}")]
    else:
        if not path.is_dir():
            return [((*loc, "name" if spec.name else "path"), f"dataset not found: {spec.name or path}")]
        missing = [name for name in ("train", "test") if not (path / name).is_dir()]
        if missing:
            return [((*loc, "path"), f"an imagefolder dataset needs {' and '.join(f'{m}/' for m in missing)} "
                                     f"inside {path}")]
        sizes = _split_sizes(spec)
        if sizes is None or sizes[0] == 0:
            return [((*loc, "name" if spec.name else "path"), f"dataset {spec.name or path} has no images")]
    train_pool = min(sizes[0], spec.limit_train or sizes[0])
    val_fraction = float(hyperparameters.get("val_fraction", 0.1))
    train_size = train_pool - min(max(1, round(train_pool * val_fraction)), train_pool - 1)
    batch_size = int(hyperparameters.get("batch_size", 64))
    if train_size < batch_size:
        return [(("hyperparameters", "batch_size"),
                 f"batch_size {batch_size} is larger than the training split ({train_size} images after "
                 f"holding out val_fraction {val_fraction:g}); use a batch size of at most {train_size}")]
    return []


def fingerprint(spec: DatasetSpec) -> str | None:
    """The content fingerprint of a resolved spec's files, or None when they are not here to read."""
    from ml.data import DatasetError, dataset_fingerprint

    try:
        return dataset_fingerprint(spec.path or "")
    except (DatasetError, OSError):
        return None


# ----------------------------------------------------------------- listing ---

def _size_on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _imagefolder_info(name: str, root: Path, kind: str, deletable: bool) -> DatasetInfo:
    from ml.data import DatasetError, imagefolder_counts

    info = DatasetInfo(name=name, kind=kind, status="ready", path=str(root), deletable=deletable)
    try:
        info.classes, info.counts = imagefolder_counts(root)
    except (DatasetError, OSError) as err:
        info.status, info.message = "failed", str(err)
    info.size_bytes = _size_on_disk(root)
    return info


def _cifar10_info(settings: Settings) -> DatasetInfo:
    from ml.data import CIFAR10_CLASSES, CIFAR_FOLDER

    assert settings.DATASETS_DIR is not None
    folder = settings.DATASETS_DIR / CIFAR_FOLDER
    if cifar10_present(settings):
        return DatasetInfo(name=CIFAR10_NAME, kind="cifar10", status="ready", path=str(settings.DATASETS_DIR),
                           classes=list(CIFAR10_CLASSES),
                           counts={"train": [5000] * 10, "test": [1000] * 10},
                           size_bytes=_size_on_disk(folder), deletable=True)
    download = _DOWNLOADS.get(str(settings.DATASETS_DIR))
    if download:
        return DatasetInfo(name=CIFAR10_NAME, kind="cifar10", status=download["status"],
                           path=str(settings.DATASETS_DIR), classes=list(CIFAR10_CLASSES), deletable=False,
                           message=download["message"])
    return DatasetInfo(name=CIFAR10_NAME, kind="cifar10", status="downloadable", path=str(settings.DATASETS_DIR),
                       classes=list(CIFAR10_CLASSES),
                       message=f"Not downloaded. Online, launch with download=true (or press Download); offline, "
                               f"put the {CIFAR_FOLDER} folder (python version of CIFAR-10) in "
                               f"{settings.DATASETS_DIR}.")


@functools.lru_cache(maxsize=1)
def _sample_info() -> DatasetInfo:
    # Package data: it never changes while the app runs, and listing 6,000 files each time adds up.
    return _imagefolder_info(SAMPLE_NAME, sample_root(), "builtin", deletable=False)


def _is_listed_folder(entry: Path) -> bool:
    return (bool(NAME_PATTERN.match(entry.name)) and entry.name not in RESERVED_FOLDERS
            and entry.name not in BUILTIN_NAMES and entry.is_dir() and not entry.is_symlink())


def list_datasets(*, settings: Settings) -> list[DatasetInfo]:
    """Every dataset the workers can train on: the sample, CIFAR-10, then image folders by name."""
    assert settings.DATASETS_DIR is not None
    found = [dataclasses.replace(_sample_info()), _cifar10_info(settings)]
    pending = dataset_uploads.pending(settings=settings)
    if settings.DATASETS_DIR.is_dir():
        for entry in sorted(settings.DATASETS_DIR.iterdir()):
            if entry.name not in pending and _is_listed_folder(entry):
                found.append(_imagefolder_info(entry.name, entry, "imagefolder", deletable=True))
    found.extend(pending.values())
    return found


def get_dataset(*, settings: Settings, name: str) -> DatasetInfo:
    """One dataset of the list (404 when there is none by that name)."""
    assert settings.DATASETS_DIR is not None
    if name == SAMPLE_NAME:
        return dataclasses.replace(_sample_info())
    if name == CIFAR10_NAME:
        return _cifar10_info(settings)
    pending = dataset_uploads.pending(settings=settings)
    if name in pending:
        return pending[name]
    folder = settings.DATASETS_DIR / name
    if NAME_PATTERN.match(name) and _is_listed_folder(folder):
        return _imagefolder_info(name, folder, "imagefolder", deletable=True)
    raise NotFound(f"there is no dataset {name!r} (GET /api/datasets lists them)")


def runs_using(*, session: Session, settings: Settings, name: str) -> list[int]:
    """Ids of queued or running runs whose data is dataset `name`."""
    from sqlmodel import select

    from app.models import Run, RunStatus

    folder = folder_of(name, settings)
    active = session.exec(select(Run).where(Run.status.in_([RunStatus.queued, RunStatus.running]))).all()
    using = []
    for run in active:
        try:
            spec = resolve_dataset(run.dataset, settings=settings)
        except InvalidInput:
            continue
        if spec.name == name or (name != CIFAR10_NAME and spec.path and Path(spec.path) == folder) or (
                name == CIFAR10_NAME and spec.kind == "cifar10" and Path(spec.path or "") == folder):
            using.append(run.id)
    return using


def delete_dataset(*, session: Session, settings: Settings, name: str) -> None:
    """Delete an image folder (or the downloaded CIFAR-10); 409 while a queued or running run uses it."""
    from ml.data import CIFAR_FOLDER

    info = get_dataset(settings=settings, name=name)
    if not info.deletable:
        raise Conflict(f"{name} is built in and cannot be deleted")
    if info.status == "processing":
        raise Conflict(f"{name} is still being processed; delete it when it is done")
    using = runs_using(session=session, settings=settings, name=name)
    if using:
        raise Conflict(f"dataset {name} is used by queued or running run(s) {', '.join(f'#{i}' for i in using)}; "
                       f"cancel them or wait until they finish")
    folder = folder_of(name, settings) / CIFAR_FOLDER if name == CIFAR10_NAME else folder_of(name, settings)
    shutil.rmtree(folder, ignore_errors=True)
    dataset_uploads.forget(settings=settings, name=name)


def public_fields(info: DatasetInfo) -> dict[str, Any]:
    """What DatasetPublic shows of a DatasetInfo (plus images per split)."""
    fields = dataclasses.asdict(info)
    fields["images"] = {split: sum(counts) for split, counts in info.counts.items()}
    return fields


# -------------------------------------------------------------- thumbnails ---

THUMB_SIDE = 32


def _class_images(info: DatasetInfo, per_class: int) -> list[list[Any]]:
    """Up to `per_class` PIL images of each class, from the training split."""
    from PIL import Image

    from ml.data import CIFAR_FOLDER, CIFAR_TEST_FILE, IMAGE_EXTENSIONS, read_cifar_batch

    if info.kind == "cifar10":
        images, labels = read_cifar_batch(Path(info.path) / CIFAR_FOLDER / CIFAR_TEST_FILE, len(info.classes))
        rows = []
        for label in range(len(info.classes)):
            picked = images[labels == label][:per_class]
            rows.append([Image.fromarray(image.permute(1, 2, 0).numpy()) for image in picked])
        return rows
    rows = []
    for cls in info.classes:
        folder = Path(info.path) / "train" / cls
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        row = []
        for path in files[:per_class]:
            try:
                with Image.open(path) as im:
                    row.append(im.convert("RGB").resize((THUMB_SIDE, THUMB_SIDE)))
            except Exception:  # noqa: BLE001 - a corrupt file in a hand-made folder leaves a gap, not a 500
                row.append(Image.new("RGB", (THUMB_SIDE, THUMB_SIDE), "lightgrey"))
        rows.append(row)
    return rows


def thumbnail_grid(*, settings: Settings, name: str, per_class: int = 8) -> bytes:
    """A PNG with one row of `per_class` training thumbnails per class (404 for a dataset not ready)."""
    import io

    from PIL import Image

    info = get_dataset(settings=settings, name=name)
    if info.status != "ready":
        raise NotFound(f"dataset {name} is {info.status}: no images to show")
    from ml.data import DatasetError

    try:
        rows = _class_images(info, per_class)
    except (DatasetError, OSError) as err:
        raise Conflict(f"cannot read the images of {name}: {err}") from None
    gap = 2
    grid = Image.new("RGB", (per_class * (THUMB_SIDE + gap), max(1, len(rows)) * (THUMB_SIDE + gap)), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image, (c * (THUMB_SIDE + gap), r * (THUMB_SIDE + gap)))
    out = io.BytesIO()
    grid.save(out, format="PNG")
    return out.getvalue()


# ---------------------------------------------------------------- download ---

_DOWNLOADS: dict[str, dict[str, str]] = {}  # DATASETS_DIR → {"status", "message"} of this process's download


def start_cifar10_download(*, settings: Settings) -> None:
    """Download CIFAR-10 into DATASETS_DIR on a background thread (409 when present or already downloading)."""
    import threading

    assert settings.DATASETS_DIR is not None
    key = str(settings.DATASETS_DIR)
    if cifar10_present(settings):
        raise Conflict("CIFAR-10 is already in DATASETS_DIR")
    if _DOWNLOADS.get(key, {}).get("status") == "processing":
        raise Conflict("CIFAR-10 is being downloaded already")
    _DOWNLOADS[key] = {"status": "processing", "message": "downloading CIFAR-10 (170 MB)"}

    def download() -> None:
        from ml.data import DatasetError, download_cifar10

        try:
            download_cifar10(settings.DATASETS_DIR)
            _DOWNLOADS.pop(key, None)
        except DatasetError as err:
            _DOWNLOADS[key] = {"status": "downloadable", "message": str(err)}

    threading.Thread(target=download, name="cifar10-download", daemon=True).start()
