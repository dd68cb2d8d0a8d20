"""The visualisations' test images: each run's test split, loaded once and kept in a small LRU."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from app.core.config import Settings
from app.core.lru import LoadingLRU
from app.models import Run
from app.services.datasets import load_run_splits
from app.services.errors import DataUnavailable, InvalidInput

if TYPE_CHECKING:  # torch and ml load lazily: the web app starts without them
    import torch

    from ml.data import ImageSet

MAX_TEST_SETS = 2  # CIFAR-10's test split is 30 MB of uint8

TEST_SETS: LoadingLRU[str, ImageSet] = LoadingLRU(MAX_TEST_SETS)


def _dataset_key(run: Run, settings: Settings) -> str:
    """What decides the test split: the dataset spec, and (for the train/val cut load_splits makes) seed and fraction."""
    return json.dumps({"dataset": run.dataset, "seed": run.hyperparameters.get("seed"),
                       "val_fraction": run.hyperparameters.get("val_fraction"),
                       "datasets_dir": str(settings.DATASETS_DIR)}, sort_keys=True)


def test_split(run: Run, settings: Settings) -> ImageSet:
    """The run's test images exactly as its worker scored them (same spec, limit and subset seed)."""
    def load() -> ImageSet:
        from ml.config import ConfigError
        from ml.data import DatasetError

        try:
            _, splits = load_run_splits(run, settings=settings)
        except (DatasetError, ConfigError) as err:
            raise DataUnavailable(f"run {run.id}'s test images cannot be loaded: {err}") from err
        return splits.test

    return TEST_SETS.get(_dataset_key(run, settings), load)


def images_per_class(test: ImageSet) -> list[int]:
    import torch

    return torch.bincount(test.labels, minlength=len(test.classes)).tolist()


def test_image(test: ImageSet, class_name: str, index: int) -> torch.Tensor:
    """The `index`-th test image of class `class_name`; InvalidInput names the valid range."""
    if class_name not in test.classes:
        raise InvalidInput([(("class_name",), f"unknown class {class_name!r}; valid: {', '.join(test.classes)}")])
    positions = (test.labels == test.classes.index(class_name)).nonzero().flatten()
    if not 0 <= index < len(positions):
        valid = f"0–{len(positions) - 1}" if len(positions) else "none: the class has no test images"
        raise InvalidInput([(("index",), f"class {class_name} has {len(positions)} test images; index must be {valid}")])
    return test.images[positions[index]]
