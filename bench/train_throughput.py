"""Training throughput: the project's trainer against a bare PyTorch loop, in one process.

Both train the same model (same seed), on the same tensors, with the same batch
size and optimiser. The bare loop has no callbacks and no bookkeeping; the
trainer runs with a callback that keeps every report, as the worker's metric
writer would. The ratio trainer/bare is the cost of reporting (target ≥ 0.97).

    .venv/bin/python bench/train_throughput.py                # task1 and net2, CPU (+ CUDA if present)
    .venv/bin/python bench/train_throughput.py --models task1 --images 3200 --repeats 5

Needs only torch (the GPU machines have no FastAPI or Celery).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.batching import normalize  # noqa: E402
from ml.config import TrainConfig, from_dict  # noqa: E402
from ml.models import build_model, get_spec  # noqa: E402
from ml.trainer import Callback, train  # noqa: E402


@dataclass
class Set:
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Splits:
    train: Set
    val: Set
    test: Set


def make_data(n: int, seed: int = 0) -> Splits:
    g = torch.Generator().manual_seed(seed)

    def part(k: int) -> Set:
        return Set(torch.randint(0, 256, (k, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (k,), generator=g))
    # Tiny val/test sets: the benchmark times training steps, not evaluation.
    return Splits(part(n), part(64), part(64))


def bench_config(model: str, epochs: int) -> TrainConfig:
    # The running protocol and one evaluation at each end keep evaluation out of the timing.
    return from_dict(TrainConfig, {**get_spec(model).defaults, "epochs": epochs, "eval_every": float(epochs),
                                   "protocol": "running", "early_stop_count": 0, "log_every": 50})


def bare_loop(model_name: str, config: TrainConfig, data: Splits, device: torch.device) -> float:
    """Images/s of the plainest loop over the same tensors: no callbacks, no accumulators."""
    use_amp = config.amp and device.type == "cuda"
    torch.manual_seed(config.seed)
    began = time.perf_counter()
    model = build_model(model_name, config.model_options, pretrained=False).to(device)
    if use_amp:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum) \
        if config.optimizer == "sgd" else torch.optim.Adam(model.parameters(), lr=config.lr)
    x, y = normalize(data.train.images, device), data.train.labels.to(device)
    n, b = len(y), config.batch_size
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(n).to(device)
        for i in range(0, n - b + 1, b):  # full batches only, as the trainer's drop_last
            idx = order[i:i + b]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            if use_amp:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss = F.cross_entropy(model(xb).float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (n // b) * b * config.epochs / (time.perf_counter() - began)


class KeepReports(Callback):
    """What a metric writer does on the training thread: keep each report for a later flush."""

    def __init__(self) -> None:
        self.reports: list[object] = []

    def on_step(self, report) -> None:
        self.reports.append(report)

    def on_eval(self, report) -> None:
        self.reports.append(report)


def trainer_loop(model_name: str, config: TrainConfig, data: Splits, device: torch.device) -> float:
    """Images/s of the project's trainer, timed from outside over the whole call (setup included, as above)."""
    began = time.perf_counter()
    result = train(model_name, config, data, device=device, callbacks=[KeepReports()])
    if device.type == "cuda":
        torch.cuda.synchronize()
    if result.status != "completed":
        raise RuntimeError(f"trainer ended {result.status}")
    images = result.steps * config.batch_size
    return images / (time.perf_counter() - began)


def measure(model_name: str, device: torch.device, images: int, epochs: int, repeats: int) -> tuple[float, float]:
    config = bench_config(model_name, epochs)
    data = make_data(images)
    bare_loop(model_name, config, make_data(config.batch_size * 4), device)  # warm-up: kernels, allocator
    bare, ours = [], []
    for i in range(repeats):
        # Alternate the order so that drift (thermal, other load) hits both alike.
        if i % 2 == 0:
            bare.append(bare_loop(model_name, config, data, device))
            ours.append(trainer_loop(model_name, config, data, device))
        else:
            ours.append(trainer_loop(model_name, config, data, device))
            bare.append(bare_loop(model_name, config, data, device))
    return statistics.median(bare), statistics.median(ours)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["task1", "net2"])
    parser.add_argument("--images", type=int, default=6400, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when present")
    args = parser.parse_args()
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"{'model':<8} {'device':<6} {'bare img/s':>11} {'trainer img/s':>14} {'ratio':>7}")
    worst = 1.0
    for device_name in devices:
        device = torch.device(device_name)
        images = args.images * (8 if device.type == "cuda" else 1)
        for model_name in args.models:
            bare, ours = measure(model_name, device, images, args.epochs, args.repeats)
            worst = min(worst, ours / bare)
            print(f"{model_name:<8} {device_name:<6} {bare:>11,.0f} {ours:>14,.0f} {ours / bare:>7.3f}", flush=True)
    print(f"worst ratio {worst:.3f} (target >= 0.97)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
