"""bf16 training gradients against fp32's: the error next to SGD's own noise, and whether it is biased.

Whole-run accuracy cannot show a bf16 cost below a point or so (two runs with
the same seed differ by about a point whatever the precision), so this looks at
the gradients the two precisions compute instead. At one set of weights (a
checkpoint, or the initialisation), each of K batches is differentiated twice:
fp32 NCHW (the bare loop's numerics) and bf16 + channels_last under autocast
(the trainer's choice on a CPU with native bf16). With e_k = g_bf16 - g_fp32 it
prints, for the whole model and per layer:

- error / noise: rms ‖e_k‖ over rms ‖g_k - ḡ‖, the minibatch noise that SGD
  already has. bf16 adds this ratio squared to the gradient's variance: the
  ratio measured against a baseline in the same run.
- bias: ‖ē‖ over what ‖ē‖ would be from per-batch error alone; about 1 means no
  bias shows over K batches, much more means bf16 pushes one way.
- ‖ē‖/‖ḡ‖: the size of that mean error against the mean gradient, which is
  what a bias would bend over many steps;
- along ḡ: ē·ḡ/‖ḡ‖², the relative change of the mean step along the mean
  gradient (negative: bf16 steps shorter).

Dropout is off at both precisions: its CPU mask is laid over the memory layout,
so NCHW and channels_last would draw different masks. Batch norm uses batch
statistics, as in training.

    .venv/bin/python bench/bf16_gradients.py                          # net2 at initialisation, built-in sample
    .venv/bin/python bench/bf16_gradients.py --data cifar10-jpeg --checkpoint runs/x/checkpoint.pt

Needs only torch.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.batching import normalize  # noqa: E402
from ml.data import load_imagefolder, sample_root  # noqa: E402
from ml.models import build_model  # noqa: E402
from ml.precision import Precision, choose_precision  # noqa: E402
from ml.trainer import model_from_checkpoint  # noqa: E402


@dataclass
class GradientStats:
    """Running sums over batches for one group of parameters (float64, so that K batches lose nothing)."""

    sum_fp32: list[torch.Tensor] = field(default_factory=list)
    sum_error: list[torch.Tensor] = field(default_factory=list)
    sq_fp32: float = 0.0  # Σ_k ‖g_k‖²
    sq_error: float = 0.0  # Σ_k ‖e_k‖²
    batches: int = 0

    def add(self, fp32: list[torch.Tensor], bf16: list[torch.Tensor]) -> None:
        errors = [b.double() - a.double() for a, b in zip(fp32, bf16)]
        if not self.sum_fp32:
            self.sum_fp32 = [torch.zeros_like(e) for e in errors]
            self.sum_error = [torch.zeros_like(e) for e in errors]
        for total, g in zip(self.sum_fp32, fp32):
            total += g.double()
        for total, e in zip(self.sum_error, errors):
            total += e
        self.sq_fp32 += sum(float(g.double().square().sum()) for g in fp32)
        self.sq_error += sum(float(e.square().sum()) for e in errors)
        self.batches += 1

    def summary(self) -> dict[str, float]:
        k = self.batches
        mean_g = [s / k for s in self.sum_fp32]
        mean_e = [s / k for s in self.sum_error]
        g2 = sum(float(g.square().sum()) for g in mean_g)
        e2 = sum(float(e.square().sum()) for e in mean_e)
        noise_var = max(self.sq_fp32 - k * g2, 0.0) / (k - 1)
        error_var = max(self.sq_error - k * e2, 0.0) / (k - 1)
        along = sum(float((e * g).sum()) for e, g in zip(mean_e, mean_g)) / g2 if g2 else math.nan
        return {
            "error/gradient": math.sqrt(self.sq_error / self.sq_fp32) if self.sq_fp32 else math.nan,
            "error/noise": math.sqrt(self.sq_error / k / noise_var) if noise_var else math.nan,
            "bias": math.sqrt(e2 / (error_var / k)) if error_var else math.nan,
            "mean error/mean gradient": math.sqrt(e2 / g2) if g2 else math.nan,
            "along": along,
        }


def _gradients(model: nn.Module, precision: Precision, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Parameter gradients of the mean cross-entropy, computed as the trainer's train_step does."""
    model.zero_grad(set_to_none=True)
    with precision.autocast():
        out = model(precision.prepare_input(x))
        loss = F.cross_entropy(out.float(), y)
    loss.backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _layer_groups(model: nn.Module) -> list[tuple[str, list[int]]]:
    """("3 BatchNorm2d", [indices into model.parameters()]) for each top-level module that has parameters."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    groups = []
    for name, module in model.named_children():
        ids = [index[id(p)] for p in module.parameters()]
        if ids:
            groups.append((f"{name} {type(module).__name__}", ids))
    return groups


def _training_copy(model: nn.Module, precision: Precision) -> nn.Module:
    """The model in training mode (batch statistics), with dropout off, laid out for `precision`."""
    copied = precision.prepare_model(copy.deepcopy(model)).train()
    for module in copied.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    return copied


def _bf16() -> Precision:
    chosen = choose_precision("cpu", amp=True)
    if chosen.name == "bf16":
        return chosen
    print("no native bf16 here: bf16 is emulated, with the same rounding, only slower")
    return Precision("bf16", "cpu", channels_last=True, grad_scaler=False, reason="forced for this bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="image folder dataset (default: the built-in sample)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="trainboard checkpoint (default: initialisation)")
    parser.add_argument("--model", default="net2", help="model at initialisation when there is no checkpoint")
    parser.add_argument("--batches", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.batches < 2:
        parser.error("--batches must be at least 2 (the noise is a variance over batches)")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")

    torch.manual_seed(args.seed)
    if args.checkpoint:
        model, state = model_from_checkpoint(args.checkpoint)
        where = f"{args.checkpoint} (step {state['step']})"
    else:
        model, where = build_model(args.model, pretrained=False), f"{args.model} at initialisation, seed {args.seed}"
    train, _ = load_imagefolder(args.data or sample_root())
    needed = args.batches * args.batch_size
    if needed > len(train):
        parser.error(f"{args.batches} batches of {args.batch_size} need {needed} images; the data has {len(train)}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:needed]

    bf16 = _bf16()
    fp32 = choose_precision("cpu", amp=False)
    model32, model16 = _training_copy(model, fp32), _training_copy(model, bf16)
    groups = _layer_groups(model32)
    stats = {"all": GradientStats(), **{name: GradientStats() for name, _ in groups}}
    for batch in order.split(args.batch_size):
        x, y = normalize(train.images[batch]), train.labels[batch]
        g32, g16 = _gradients(model32, fp32, x, y), _gradients(model16, bf16, x, y)
        stats["all"].add(g32, g16)
        for name, ids in groups:
            stats[name].add([g32[i] for i in ids], [g16[i] for i in ids])

    print(f"weights: {where}; {args.batches} batches of {args.batch_size}; bf16: {bf16.describe()}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'parameters':<18} {'error/gradient':>14} {'error/noise':>12} {'bias':>6} {'‖ē‖/‖ḡ‖':>9} "
          f"{'along ḡ':>9}")
    for name, group in stats.items():
        s = group.summary()
        print(f"{name:<18} {s['error/gradient']:>14.2%} {s['error/noise']:>12.3f} {s['bias']:>6.2f} "
              f"{s['mean error/mean gradient']:>9.2%} {s['along']:>+9.2%}")
    ratio = stats["all"].summary()["error/noise"]
    print(f"\nbf16's gradient error is {ratio:.3f}× SGD's minibatch noise: it adds {ratio ** 2:.2%} to the "
          f"gradient's variance")


if __name__ == "__main__":
    main()
