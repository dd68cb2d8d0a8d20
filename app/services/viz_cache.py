"""The visualisations' caches: loaded models in memory, computed results on disk, per checkpoint.

* on disk, ARTIFACTS_DIR/<run id>/viz/<checkpoint fingerprint>/ holds each
  computed result (filters.png, activations-c<class>-i<index>.json,
  confusion.json). The fingerprint is the checkpoint's mtime and size, so a new
  checkpoint (a running run evaluates again) gets a fresh folder and the stale
  ones are deleted;
* in memory, a small LRU of loaded models (by the same fingerprint), so that a
  page's several requests load each once.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sqlmodel import Session

from app.core.config import Settings
from app.core.lru import LoadingLRU
from app.models import Run
from app.services import runs
from app.services.errors import CheckpointUnreadable, NoCheckpointYet
from ml.files import atomic_write

if TYPE_CHECKING:  # torch loads lazily: the web app starts without it
    from torch import nn

log = logging.getLogger(__name__)

VIZ_FOLDER = "viz"
CACHE_VERSION = 1  # bump when a cached file's content changes, so old folders stop matching
MAX_MODELS = 3  # a resnet18 is ~45 MB; three keep the report's runs warm


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


def cached(ref: CheckpointRef, settings: Settings, name: str, compute: Callable[[], bytes],
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
    keep_newest_files(path.parent, settings.MAX_CACHED_VISUALIZATIONS)
    return data


def keep_newest_files(folder: Path, max_files: int) -> None:
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
    try:
        with atomic_write(path) as out:
            out.write(data)
    except OSError as err:
        log.warning("cannot cache %s (%s); it is computed again next time", path, err)


def _remove_stale_folders(current: Path) -> None:
    """Delete the cache folders of the run's earlier checkpoints."""
    try:
        siblings = [p for p in current.parent.iterdir() if p != current and p.is_dir()]
    except OSError:  # nothing was written (read-only artifacts): nothing to clean either
        return
    for sibling in siblings:
        shutil.rmtree(sibling, ignore_errors=True)
