"""Uploaded image-folder datasets: stream to disk under a limit, extract safely, check, then list.

An upload goes through `DATASETS_DIR/.uploads/`:
1. `receive` writes the body to `<name>.archive` as it streams in and stops at
   DATASET_UPLOAD_MAX_BYTES (the limit holds for chunked bodies too);
2. `process` (on a background thread) extracts it into `<name>.staging/`,
   refusing absolute paths, `..`, links and devices, and capping the member
   count and the unpacked bytes (which are counted as they are written, so a
   zip whose headers lie still stops); it then checks the layout, decodes every
   image (a corrupt one is named), and moves the tree to `DATASETS_DIR/<name>`.
Meanwhile `<name>.json` holds the state and progress the list shows; a failed
upload stays listed with its message until it is deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import threading
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from app.core.config import Settings
from app.services.dataset_base import BUILTIN_NAMES, RESERVED_FOLDERS, DatasetInfo, check_name
from app.services.errors import Conflict, InvalidInput, ServiceError
from ml.files import atomic_write

UPLOADS_FOLDER = ".uploads"
COPY_CHUNK = 1 << 20
# Entries that archivers add and that are never data.
JUNK_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db"})
MAX_IMAGE_SIDE = 4096  # a larger image is a decompression bomb, not a training image


class UploadTooLarge(ServiceError):
    """413: the body passed DATASET_UPLOAD_MAX_BYTES."""


class UnsafeArchive(ValueError):
    """The archive (or what it unpacks to) breaks a rule; the message says which member and why."""


# ----------------------------------------------------------------- state ---

def _uploads_dir(settings: Settings) -> Path:
    assert settings.DATASETS_DIR is not None
    return settings.DATASETS_DIR / UPLOADS_FOLDER


def _state_path(settings: Settings, name: str) -> Path:
    return _uploads_dir(settings) / f"{name}.json"


def _write_state(settings: Settings, name: str, **state: Any) -> None:
    with atomic_write(_state_path(settings, name), "w") as file:
        file.write(json.dumps({"name": name, "pid": os.getpid(), **state}))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pending(*, settings: Settings) -> dict[str, Any]:
    """DatasetInfo of uploads still processing or failed, by name."""
    found: dict[str, Any] = {}
    folder = _uploads_dir(settings)
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        name = str(state.get("name", path.stem))
        status, message = state.get("status", "failed"), state.get("message", "")
        if status == "processing" and not _alive(int(state.get("pid", 0))):
            status, message = "failed", "processing was interrupted (the server stopped); delete and upload again"
        found[name] = DatasetInfo(name=name, kind="imagefolder", status=status, path="", deletable=True,
                                  message=message, progress=state.get("progress"))
    return found


def forget(*, settings: Settings, name: str) -> None:
    """Remove what an upload left in the staging area (its state, archive, staging tree)."""
    folder = _uploads_dir(settings)
    for suffix in (".json", ".archive"):
        (folder / f"{name}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(folder / f"{name}.staging", ignore_errors=True)


# --------------------------------------------------------------- receive ---

def begin(*, settings: Settings, name: str) -> Path:
    """Check that `name` is free and reserve it; the archive's path to write to."""
    check_name(name)
    if name in BUILTIN_NAMES or name in RESERVED_FOLDERS:
        raise InvalidInput([(("name",), f"{name} is a built-in dataset name; choose another")])
    assert settings.DATASETS_DIR is not None
    if (settings.DATASETS_DIR / name).exists() or _state_path(settings, name).exists():
        raise Conflict(f"a dataset named {name} exists already; delete it first or choose another name")
    folder = _uploads_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    _write_state(settings, name, status="processing", message="receiving the archive", progress=0.0)
    return folder / f"{name}.archive"


async def receive(chunks: AsyncIterator[bytes], *, settings: Settings, name: str,
                  declared_length: int | None) -> Path:
    """Write the streamed body to the upload's archive, stopping at DATASET_UPLOAD_MAX_BYTES (413)."""
    limit = settings.DATASET_UPLOAD_MAX_BYTES
    too_large = UploadTooLarge(f"the archive is larger than DATASET_UPLOAD_MAX_BYTES ({limit:,} bytes)")
    if declared_length is not None and declared_length > limit:
        raise too_large
    archive = begin(settings=settings, name=name)
    received = 0
    try:
        with open(archive, "wb") as out:
            async for chunk in chunks:
                received += len(chunk)
                if received > limit:
                    raise too_large
                out.write(chunk)
        if received == 0:
            raise InvalidInput([(("body",), "the upload is empty: send a .zip, .tar or .tar.gz archive")])
    except BaseException:
        forget(settings=settings, name=name)
        raise
    return archive


def start_processing(*, settings: Settings, name: str) -> threading.Thread:
    """Process the received archive on a background thread (the list shows its progress)."""
    thread = threading.Thread(target=process, kwargs={"settings": settings, "name": name},
                              name=f"dataset-upload-{name}", daemon=True)
    thread.start()
    return thread


def process(*, settings: Settings, name: str) -> None:
    """Extract, check and install upload `name`; on any problem record it as failed with the reason."""
    folder = _uploads_dir(settings)
    archive, staging = folder / f"{name}.archive", folder / f"{name}.staging"
    assert settings.DATASETS_DIR is not None
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        extract_archive(archive, staging, max_members=settings.DATASET_MAX_MEMBERS,
                        max_bytes=settings.DATASET_MAX_UNPACKED_BYTES,
                        progress=lambda f: _write_state(settings, name, status="processing",
                                                        message="extracting", progress=0.5 * f))
        archive.unlink(missing_ok=True)
        root = arrange_layout(staging, test_fraction=settings.DATASET_TEST_FRACTION, seed=settings.DATASET_SPLIT_SEED)
        verify_images(root, progress=lambda f: _write_state(settings, name, status="processing",
                                                            message="checking images", progress=0.5 + 0.5 * f))
        os.replace(root, settings.DATASETS_DIR / name)
        forget(settings=settings, name=name)
    except Exception as err:  # noqa: BLE001 - every failure is the upload's verdict, shown in the list
        from ml.data import DatasetError

        known = isinstance(err, (UnsafeArchive, DatasetError))
        message = str(err) if known else f"could not process the archive ({type(err).__name__}: {err})"
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)
        _write_state(settings, name, status="failed", message=message, progress=None)


# --------------------------------------------------------------- extract ---

def _safe_name(raw: str) -> str | None:
    """The member's relative path, None for junk to skip; UnsafeArchive for absolute paths or `..`."""
    if "\\" in raw or raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise UnsafeArchive(f"unsafe archive: absolute or Windows path {raw!r}; only relative paths are allowed")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"unsafe archive: {raw!r} leads out of the archive with '..'")
    if not parts or any(part in JUNK_NAMES or part.startswith("._") for part in parts):
        return None
    return "/".join(parts)


class _Budget:
    """Counts members and unpacked bytes against the caps as they are written."""

    def __init__(self, max_members: int, max_bytes: int):
        self.max_members, self.max_bytes = max_members, max_bytes
        self.members = self.bytes = 0

    def member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise UnsafeArchive(f"the archive has more than DATASET_MAX_MEMBERS ({self.max_members:,}) entries")

    def add(self, count: int) -> None:
        self.bytes += count
        if self.bytes > self.max_bytes:
            raise UnsafeArchive(f"the archive unpacks to more than DATASET_MAX_UNPACKED_BYTES "
                                f"({self.max_bytes:,} bytes)")


def _write_file(source: IO[bytes], dest: Path, rel: str, budget: _Budget) -> None:
    target = dest / rel
    if not target.resolve().is_relative_to(dest.resolve()):  # belt and braces after _safe_name
        raise UnsafeArchive(f"unsafe archive: {rel!r} leads out of the archive")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "xb") as out:  # x: a repeated member cannot overwrite through anything
        while chunk := source.read(COPY_CHUNK):
            budget.add(len(chunk))
            out.write(chunk)


def _sniff(archive: Path) -> str:
    with open(archive, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise UnsafeArchive("not a .zip, .tar or .tar.gz archive (unrecognised file contents)")


def extract_archive(archive: Path, dest: Path, *, max_members: int, max_bytes: int,
                    progress: Any = None) -> None:
    """Extract a .zip/.tar/.tar.gz into `dest` safely; UnsafeArchive names the first member that breaks a rule."""
    budget = _Budget(max_members, max_bytes)
    report = progress or (lambda fraction: None)
    kind = _sniff(archive)
    try:
        if kind == "zip":
            _extract_zip(archive, dest, budget, report)
        else:
            _extract_tar(archive, dest, budget, report)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise UnsafeArchive(f"the archive is damaged or truncated ({type(err).__name__}: {err})") from err


def _extract_zip(archive: Path, dest: Path, budget: _Budget, report: Any) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > budget.max_members:
            budget.members = len(infos) - 1
            budget.member()
        if sum(info.file_size for info in infos) > budget.max_bytes:
            budget.add(sum(info.file_size for info in infos))
        for i, info in enumerate(infos):
            budget.member()
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeArchive(f"unsafe archive: {info.filename!r} is a link; links are not allowed")
            # Archivers that record no file type (type bits 0) make plain files.
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnsafeArchive(f"unsafe archive: {info.filename!r} is a device or special file")
            rel = _safe_name(info.filename)
            if rel is None or info.is_dir():
                continue
            with zf.open(info) as source:
                _write_file(source, dest, rel, budget)
            if i % 200 == 0:
                report(i / len(infos))


def _extract_tar(archive: Path, dest: Path, budget: _Budget, report: Any) -> None:
    total = archive.stat().st_size or 1
    with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
        for i, member in enumerate(tar):
            budget.member()
            if member.issym() or member.islnk():
                raise UnsafeArchive(f"unsafe archive: {member.name!r} is a link; links are not allowed")
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchive(f"unsafe archive: {member.name!r} is a device or special file")
            rel = _safe_name(member.name)
            if rel is None or member.isdir():
                continue
            if member.size > budget.max_bytes - budget.bytes:
                budget.add(member.size)
            source = tar.extractfile(member)
            if source is not None:
                _write_file(source, dest, rel, budget)
            if i % 200 == 0:
                report(min(1.0, raw.tell() / total))


# ---------------------------------------------------------------- layout ---

def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def arrange_layout(staging: Path, *, test_fraction: float, seed: int) -> Path:
    """The dataset root inside `staging`, as `train/<class>/` + `test/<class>/`.

    Accepted: that layout, or a single `<class>/` tree (split here, per class, by
    a seeded fraction), each optionally inside one wrapping folder.
    """
    from ml.data import IMAGE_EXTENSIONS, IMAGEFOLDER_LAYOUT, imagefolder_counts

    root = staging
    while len(_visible_dirs(root)) == 1 and not _visible_files(root) and \
            {p.name for p in _visible_dirs(root)} - {"train", "test"}:
        root = _visible_dirs(root)[0]
    names = {p.name for p in _visible_dirs(root)}
    if {"train", "test"} <= names:
        imagefolder_counts(root)  # raises DatasetError naming what is wrong
        return root
    if "train" in names or "test" in names:
        raise UnsafeArchive(f"bad layout: found {'train/' if 'train' in names else 'test/'} without "
                            f"{'test/' if 'train' in names else 'train/'}. Expected {IMAGEFOLDER_LAYOUT}, "
                            f"or one folder per class (split into train and test here).")
    classes = _visible_dirs(root)
    images = {c: [p for p in _visible_files(c) if p.suffix.lower() in IMAGE_EXTENSIONS] for c in classes}
    if not classes or not any(images.values()):
        raise UnsafeArchive(f"bad layout: no class folders with images. Expected {IMAGEFOLDER_LAYOUT}, "
                            f"or one folder per class holding its images.")
    empty = [c.name for c, files in images.items() if not files]
    if empty:
        raise UnsafeArchive(f"bad layout: class folder(s) without images: {', '.join(empty)}")
    split = _split_classes(root, images, test_fraction=test_fraction, seed=seed)
    imagefolder_counts(split)
    return split


def _split_classes(root: Path, images: dict[Path, list[Path]], *, test_fraction: float, seed: int) -> Path:
    """Move `<class>/*` into `split/train/<class>/` and `split/test/<class>/` (a seeded fraction to test)."""
    import torch

    out = root / ".split"
    for class_dir, files in images.items():
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(files), generator=generator).tolist()
        n_test = min(len(files) - 1, round(len(files) * test_fraction)) if len(files) > 1 else 0
        for rank, index in enumerate(order):
            split = "test" if rank < n_test else "train"
            target = out / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            os.replace(files[index], target / files[index].name)
        (out / "test" / class_dir.name).mkdir(parents=True, exist_ok=True)
    return out


def verify_images(root: Path, progress: Any = None) -> None:
    """Decode every image of the dataset; DatasetError names the first file that is corrupt."""
    from PIL import Image

    from ml.data import IMAGE_EXTENSIONS, DatasetError

    report = progress or (lambda fraction: None)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    for i, path in enumerate(files):
        rel = path.relative_to(root)
        try:
            with Image.open(path) as im:
                if max(im.size) > MAX_IMAGE_SIDE:
                    raise DatasetError(f"image {rel} is {im.size[0]}×{im.size[1]} pixels; at most "
                                       f"{MAX_IMAGE_SIDE} a side")
                im.load()
        except DatasetError:
            raise
        except Exception as err:  # Pillow's plugins raise many types for a malformed file
            raise DatasetError(f"corrupt image {rel} ({type(err).__name__}: {err}); replace or remove it "
                               f"and upload again") from err
        if i % 500 == 0:
            report(i / max(1, len(files)))

