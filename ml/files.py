"""Atomic file writes, for ml and every layer above it (standard library only, so torch-free callers may import it)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """A file to write that appears at `path` whole, or not at all.

    It is a hidden temporary file beside `path` (same filesystem, so the rename is
    atomic), renamed over `path` when the block ends; if the block raises, it is
    removed and `path` keeps its old content. Readers and a crash never see half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as file:
            yield file
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; whoever may read the folder may read the file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
