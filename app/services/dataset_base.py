"""What the dataset catalog (datasets.py) and the uploads (dataset_uploads.py) share: names and the listed shape.

A module below both, so that the catalog can list pending uploads and the uploads can check names
without the two importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from app.services.errors import InvalidInput, Loc

SAMPLE_NAME = "cifar10-sample"
CIFAR10_NAME = "cifar10"
BUILTIN_NAMES = frozenset({SAMPLE_NAME, CIFAR10_NAME})
# Names become folder names: no separators, no leading dot, nothing a shell or URL needs quoting for.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
# Folders in DATASETS_DIR that are not datasets: CIFAR-10's own, and upload staging.
RESERVED_FOLDERS = frozenset({"cifar-10-batches-py"})


def check_name(name: str, loc: Loc = ("name",)) -> str:
    if not NAME_PATTERN.match(name):
        raise InvalidInput([(loc, f"a dataset name is {NAME_RULE}")])
    return name


@dataclass
class DatasetInfo:
    name: str
    kind: str  # builtin, cifar10, imagefolder
    status: str  # ready, downloadable, processing, failed
    path: str
    classes: list[str] = field(default_factory=list)
    counts: dict[str, list[int]] = field(default_factory=dict)
    size_bytes: int = 0
    deletable: bool = False
    message: str = ""
    progress: float | None = None
