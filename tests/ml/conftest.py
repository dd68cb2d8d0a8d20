"""Fixtures for ml/ tests: small synthetic splits that a CNN learns in a few steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


@dataclass
class FakeSet:
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FakeSplits:
    train: FakeSet
    val: FakeSet
    test: FakeSet
    classes: list[str]
    source: str = "synthetic"


def make_set(n: int, seed: int) -> FakeSet:
    """Each class is a distinct colour plus noise: learnable, yet not trivial at step 0."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    palette = torch.linspace(20, 235, 10)
    base = palette[labels].view(n, 1, 1, 1).expand(n, 3, 32, 32).clone()
    base[:, 1] = palette.flip(0)[labels].view(n, 1, 1)
    noise = torch.randn(n, 3, 32, 32, generator=g) * 20
    images = (base + noise).clamp(0, 255).to(torch.uint8)
    return FakeSet(images, labels, [f"c{i}" for i in range(10)])


@pytest.fixture(scope="session")
def synthetic_splits() -> FakeSplits:
    classes = [f"c{i}" for i in range(10)]
    return FakeSplits(make_set(320, 1), make_set(128, 2), make_set(128, 3), classes)


@pytest.fixture(scope="session")
def jpeg_cifar_subset(sample_subset: Callable[[int, int], Path]) -> Path:
    """200 train + 50 test images per class of the real JPEG CIFAR-10 (from the built-in sample)."""
    return sample_subset(200, 50)
