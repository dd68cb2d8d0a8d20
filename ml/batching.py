"""Batches from index permutations over whole-dataset tensors (the airbench way).

The dataset is decoded once into uint8 and moved once to the training device,
still as uint8 (a quarter of float32's memory and of each batch's gather
traffic); every batch is an index into it, normalised on the device. No
per-image work, no worker processes, and no host↔device copy per step on CUDA.
A dataset too large for the GPU's memory stays in pinned host memory and each
batch is copied asynchronously (see `data_placement`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def normalize(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 N×3×H×W (or 3×H×W) → float32, scaled to [0, 1] and normalised with CIFAR's mean/std."""
    x = images.to(device=device).float().div_(255)
    shape = (3, 1, 1) if x.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(CIFAR_MEAN, device=x.device).view(shape)
    std = torch.tensor(CIFAR_STD, device=x.device).view(shape)
    return x.sub_(mean).div_(std)


# Keep this share of the GPU's free memory for the model, activations and the allocator.
DEVICE_DATA_FRACTION = 0.5


def data_placement(data_bytes: int, device: torch.device, free_bytes: int | None = None) -> tuple[str, str]:
    """Where the uint8 dataset lives: ("device", why) or, on CUDA when it does not fit, ("pinned", why).

    `free_bytes` is the GPU's free memory (asked of the device when left out; tests pass it).
    """
    if device.type != "cuda":
        return "device", f"data on {device.type} ({data_bytes / 2**20:,.0f} MiB as uint8)"
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    budget = int(free_bytes * DEVICE_DATA_FRACTION)
    if data_bytes <= budget:
        return "device", f"data on the GPU ({data_bytes / 2**20:,.0f} MiB as uint8)"
    return "pinned", (f"the data ({data_bytes / 2**20:,.0f} MiB as uint8) is larger than half the GPU's free "
                      f"memory ({free_bytes / 2**20:,.0f} MiB): it stays in pinned host memory and each batch is "
                      f"copied to the GPU asynchronously (slower than data on the GPU)")


def place(images: torch.Tensor, device: torch.device, placement: str) -> torch.Tensor:
    """The images on `device`, or pinned in host memory for asynchronous copies."""
    if placement == "pinned":
        return images.pin_memory()
    return images.to(device)


def with_index(device: torch.device) -> torch.device:
    """`device` with its index: "cuda" names the current GPU, but a tensor there reports "cuda:0",
    and torch.device("cuda") != torch.device("cuda:0"), so comparisons need the index filled in."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with `pad` px of zero padding plus a random horizontal flip, for a whole batch."""
    n = len(x)
    dy, dx, flip = augment_draws(n, generator, pad)
    return crop_and_flip(x, dy.to(x.device), dx.to(x.device), flip.to(x.device), pad)


def augment_draws(n: int, generator: torch.Generator, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop offsets (dy, dx) and flip flags for `n` images."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device)
    flip = torch.rand(n, generator=generator, device=generator.device) < 0.5
    return dy, dx, flip


def crop_and_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
                  pad: int = 4) -> torch.Tensor:
    """Crop each image at its (dy, dx) of a zero-padded batch and flip where `flip`: all on x's device.

    One crop offset per image, done as a single gather over a padded batch, so the
    cost is a few tensor ops per batch whatever the batch size.
    """
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dev = x.device
    rows = (dy.view(n, 1) + torch.arange(h, device=dev)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
    cropped = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w, device=dev)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    cropped = cropped.gather(3, cols)
    return torch.where(flip.view(n, 1, 1, 1), cropped.flip(3), cropped)


def _take(values: torch.Tensor, positions: slice | torch.Tensor) -> torch.Tensor:
    """values[positions]: a view for a slice, an index_select (capturable in a CUDA graph) for a tensor."""
    return values[positions] if isinstance(positions, slice) else values.index_select(0, positions)


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's order over the dataset and its augmentation draws (crop offsets, flips)."""

    order: torch.Tensor  # on the loader's device (indexes the labels)
    order_of_images: torch.Tensor  # on the images' device: the same as `order`, or a host copy for pinned images
    draws: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # (dy, dx, flip) on the device, or None


class BatchLoader:
    """Shuffled (or ordered) batches of a tensor dataset that already sits on its device (or pinned host memory).

    uint8 images are normalised per batch on `device`; float images are taken as already normalised.
    `device` defaults to the images' device; images in pinned host memory are copied there per batch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 shuffle: bool, seed: int = 0, augment: bool = False, drop_last: bool = False,
                 device: torch.device | str | None = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.device = with_index(torch.device(device) if device is not None else images.device)
        self.images, self.labels = images, labels.to(self.device)
        # x * scale - shift == (x / 255 - mean) / std, with both on the device once (no copy per batch).
        std = torch.tensor(CIFAR_STD, device=self.device).view(1, 3, 1, 1)
        self._scale = 1 / (255 * std)
        self._shift = torch.tensor(CIFAR_MEAN, device=self.device).view(1, 3, 1, 1) / std
        self.batch_size, self.shuffle, self.seed, self.augment = batch_size, shuffle, seed, augment
        # Training drops the last incomplete batch when there is at least one full one: at the
        # study's lr 0.05, one SGD step on the 8 leftover images of CIFAR's 45,000 throws the
        # model far off (measured: val loss 1.36 → 4.13), right before the epoch-end evaluation.
        self.drop_last = drop_last and len(images) >= batch_size

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.images) // self.batch_size
        return math.ceil(len(self.images) / self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.images)

    def _generator(self, epoch: int, batch: int = -1) -> torch.Generator:
        # Seeded per epoch (and per batch for augmentation), so that a resumed
        # run replays exactly the same order and the same crops.
        g = torch.Generator(device="cpu")
        g.manual_seed((self.seed * 100_003 + epoch) * 1_000_003 + batch + 1)
        return g

    def _to_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Gathered images → normalised float32 on the device."""
        if images.device != self.device:  # pinned host memory: an asynchronous copy
            images = images.pin_memory().to(self.device, non_blocking=True)
        if images.dtype != torch.uint8:
            return images
        return torch.addcmul(self._shift.neg(), images.float(), self._scale)

    def plan(self, epoch: int = 0) -> EpochPlan:
        """The order of `epoch` and its augmentation's random draws, each moved to the device in one copy.

        Seeded per epoch, so that a resumed run replays exactly the same order and crops."""
        n = len(self.images)
        order = torch.randperm(n, generator=self._generator(epoch)) if self.shuffle else torch.arange(n)
        draws = None
        if self.augment:  # seeded as the batch after the last one, so no batch shares its stream
            draws = tuple(d.to(self.device) for d in augment_draws(n, self._generator(epoch, len(self))))
        return EpochPlan(order=order.to(self.device), order_of_images=order.to(self.images.device), draws=draws)

    def batch_window(self, index: int) -> slice:
        """The positions of batch `index` in its epoch's order."""
        return slice(index * self.batch_size, min((index + 1) * self.batch_size, len(self.images)))

    def batch(self, plan: EpochPlan, positions: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised (and augmented) images and the labels at `positions` of the plan's order.

        `positions` is a slice, or an index tensor on the device (what a CUDA graph gathers with):
        both give the same batch, bit for bit."""
        x = self._to_batch(self.images.index_select(0, _take(plan.order_of_images, positions)))
        y = self.labels.index_select(0, _take(plan.order, positions))
        if plan.draws is not None:
            x = crop_and_flip(x, *(_take(d, positions) for d in plan.draws))
        return x, y

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch`, from batch index `start` on; nothing per step waits on the host."""
        plan = self.plan(epoch)
        for i in range(start, len(self)):
            yield self.batch(plan, self.batch_window(i))
