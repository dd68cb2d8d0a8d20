"""Training throughput: the project's trainer against a bare fp32 PyTorch loop, in one process.

All loops train the same model (same seed), on the same tensors, with the same
batch size and optimiser. The bare loop is plain fp32 NCHW with no callbacks
and no bookkeeping; the trainer runs with a callback that keeps every report,
as the worker's metric writer would. Two ratios:

- trainer fp32 (amp=false) / bare fp32: the cost of reporting (target ≥ 0.97);
- trainer at its chosen precision / bare fp32: the speed-up users get (bf16 +
  channels_last on GPUs and on CPUs with AMX/AVX512-BF16; fp32 elsewhere, and
  then the bench says so).

Where the trainer runs at bf16 on a CPU, a line per model splits that speed-up:
the model's convolutions alone, timed at both precisions (oneDNN runs them near
the CPU's peak either way, so no change to the trainer moves their ratio), and
the rest of a step, from the loops' images/s.

    .venv/bin/python bench/train_throughput.py                # task1 and net2, CPU (+ CUDA if present)
    .venv/bin/python bench/train_throughput.py --models task1 --images 3200 --repeats 5
    .venv/bin/python bench/train_throughput.py --models net2 --compile   # also the trainer with torch.compile

Needs only torch (the GPU machines have no FastAPI or Celery).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # when loaded from a file, not run

from bf16_conv_exactness import conv_shapes  # noqa: E402

from ml.batching import normalize  # noqa: E402
from ml.config import TrainConfig, from_dict  # noqa: E402
from ml.models import ELU, Dropout, build_model, get_spec  # noqa: E402
from ml.precision import Precision, choose_precision  # noqa: E402
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


def bench_config(model: str, epochs: int, **overrides) -> TrainConfig:
    # The running protocol and one evaluation at each end keep evaluation out of the timing.
    return from_dict(TrainConfig, {**get_spec(model).defaults, "epochs": epochs, "eval_every": float(epochs),
                                   "protocol": "running", "early_stop_count": 0, "log_every": 50, **overrides})


def with_stock_modules(model: nn.Module) -> nn.Module:
    """The model with torch's own nn.Dropout and nn.ELU in place of ml.models' CPU variants.

    The bare loop stands for the study's plain PyTorch code, which used nn.Dropout
    and nn.ELU. (At fp32 ml.models.ELU is nn.ELU anyway; Dropout's mask is not.)
    """
    for name, child in model.named_children():
        if isinstance(child, Dropout):
            setattr(model, name, nn.Dropout(child.p))
        elif isinstance(child, ELU):
            setattr(model, name, nn.ELU(child.alpha))
        else:
            with_stock_modules(child)
    return model


def bare_loop(model_name: str, config: TrainConfig, data: Splits, device: torch.device) -> float:
    """Images/s of the plainest fp32 loop over the same tensors: stock modules, no callbacks, no accumulators, NCHW."""
    torch.manual_seed(config.seed)
    began = time.perf_counter()
    model = with_stock_modules(build_model(model_name, config.model_options, pretrained=False)).to(device)
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
            loss = F.cross_entropy(model(xb), yb)
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


def measure(model_name: str, device: torch.device, images: int, epochs: int, repeats: int,
            compile_too: bool = False) -> dict[str, float]:
    """Median images/s of each loop: bare fp32, trainer fp32, trainer at its chosen precision (+ compiled)."""
    loops = {
        "bare": lambda data: bare_loop(model_name, bench_config(model_name, epochs), data, device),
        "trainer_fp32": lambda data: trainer_loop(model_name, bench_config(model_name, epochs, amp=False), data, device),
        "trainer": lambda data: trainer_loop(model_name, bench_config(model_name, epochs), data, device),
    }
    if compile_too:
        loops["trainer_compiled"] = lambda data: trainer_loop(
            model_name, bench_config(model_name, epochs, compile=True), data, device)
    data = make_data(images)
    warm = make_data(bench_config(model_name, epochs).batch_size * 4)
    for loop in loops.values():  # warm-up: kernels, allocator (and torch.compile's cache)
        loop(warm)
    results: dict[str, list[float]] = {name: [] for name in loops}
    for i in range(repeats):
        # Rotate the order so that drift (thermal, other load) hits every loop alike.
        names = list(loops)
        names = names[i % len(names):] + names[:i % len(names)]
        for name in names:
            results[name].append(loops[name](data))
    return {name: statistics.median(values) for name, values in results.items()}


def conv_times(model_name: str, precision: Precision, batch: int, repeats: int = 15) -> tuple[float, float]:
    """Milliseconds per batch of the model's convolutions alone, forward and backward: fp32 NCHW, then `precision`.

    On a CPU they are most of a step, and oneDNN runs them near the CPU's peak at
    either precision, so their ratio is the part of the speed-up that the trainer
    cannot change. The two alternate, so that drift hits both alike.
    """
    def convolutions(p: Precision) -> Callable[[], None]:
        torch.manual_seed(0)
        layers, inputs = [], []
        for i, shape in enumerate(conv_shapes(model_name)):
            conv = nn.Conv2d(shape["cin"], shape["cout"], shape["k"], padding=shape["pad"])
            layers.append(p.prepare_model(conv))
            # The first convolution's input is the image, which needs no gradient.
            image = torch.randn(batch, shape["cin"], shape["hw"], shape["hw"], requires_grad=i > 0)
            inputs.append(p.prepare_input(image))
        with p.autocast():  # the output's dtype and layout, for a gradient shaped like the one a step receives
            grads = [torch.randn_like(layer(x)) for layer, x in zip(layers, inputs)]

        def forward_backward() -> None:
            for layer, x, grad in zip(layers, inputs, grads):
                layer.zero_grad(set_to_none=True)
                with p.autocast():
                    out = layer(x)
                out.backward(grad)
        return forward_backward

    loops = [convolutions(choose_precision("cpu", False)), convolutions(precision)]
    times: list[list[float]] = [[], []]
    for i in range(repeats + 1):
        for loop, kept in zip(loops, times):
            began = time.perf_counter()
            loop()
            if i:  # the first round warms the kernels up
                kept.append((time.perf_counter() - began) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def step_breakdown(model_name: str, precision: Precision, batch: int, bare: float, trainer: float) -> str:
    """Where the speed-up comes from: the convolutions' ratio, and the rest of a step's (from the loops' images/s)."""
    conv_fp32, conv_chosen = conv_times(model_name, precision, batch)
    rest_fp32 = batch * 1000 / bare - conv_fp32
    rest_chosen = batch * 1000 / trainer - conv_chosen
    rest = f"{rest_fp32 / rest_chosen:.2f}x" if rest_chosen > 0 and rest_fp32 > 0 else "within noise"
    return (f"{model_name}: a batch's convolutions {conv_fp32:.1f} -> {conv_chosen:.1f} ms "
            f"({conv_fp32 / conv_chosen:.2f}x), the rest of its step {rest_fp32:.1f} -> {rest_chosen:.1f} ms ({rest})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["task1", "net2"])
    parser.add_argument("--images", type=int, default=6400, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when present")
    parser.add_argument("--compile", action="store_true", help="also time the trainer with compile=true")
    args = parser.parse_args()
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"))
    worst = 1.0
    for device_name in devices:
        device = torch.device(device_name)
        chosen = choose_precision(device, True)
        print(f"{device_name}: the trainer's precision is {chosen.describe()}")
        if chosen.name == "fp32":
            print(f"{device_name}: no native bf16 here, so the trainer stays fp32 (no mixed-precision speed-up)")
        header = f"{'model':<8} {'device':<6} {'bare fp32':>10} {'trainer fp32':>13} {'ratio':>6} " \
                 f"{'trainer ' + chosen.name:>13} {'speed-up':>9}"
        print(header + (f" {'compiled':>9} {'speed-up':>9}" if args.compile else ""))
        images = args.images * (8 if device.type == "cuda" else 1)
        for model_name in args.models:
            r = measure(model_name, device, images, args.epochs, args.repeats, args.compile)
            worst = min(worst, r["trainer_fp32"] / r["bare"])
            line = (f"{model_name:<8} {device_name:<6} {r['bare']:>10,.0f} {r['trainer_fp32']:>13,.0f} "
                    f"{r['trainer_fp32'] / r['bare']:>6.3f} {r['trainer']:>13,.0f} {r['trainer'] / r['bare']:>8.2f}x")
            if args.compile:
                line += f" {r['trainer_compiled']:>9,.0f} {r['trainer_compiled'] / r['bare']:>8.2f}x"
            print(line, flush=True)
            if device.type == "cpu" and chosen.name != "fp32" and model_name != "resnet18":  # 256 px: minutes
                print(step_breakdown(model_name, chosen, bench_config(model_name, 1).batch_size, r["bare"],
                                     r["trainer"]), flush=True)
    print(f"worst reporting ratio (trainer fp32 / bare fp32) {worst:.3f} (target >= 0.97); "
          f"speed-up = trainer at its chosen precision / bare fp32 loop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
