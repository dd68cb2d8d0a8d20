"""How exact a CPU's bf16 convolutions are, per oneDNN instruction set, against float64.

bf16 runs of net2 landed lower than fp32 in all five seed pairs on an AMX Xeon and level on
average on AVX512-BF16 EPYCs (docs/benchmarks.md). This asks whether the kernels differ: each of
a model's convolutions (its own shapes, batch 64, bf16, channels_last) runs forward, backward data
and backward weights once per instruction set, each in a child process with oneDNN capped by
ONEDNN_MAX_CPU_ISA, on the same bf16 inputs. Each result is compared with float64 on those inputs:

- error / rounding: the kernel's relative rms error over what rounding the float64 result to bf16
  alone leaves (the baseline, measured on the same data). 1.00 means the kernel is as exact as a
  bf16 output allows; more means it loses precision inside (bf16 partial sums, for one).
- bias: the error's component along the exact result, relative (negative: results shrink). Round to
  nearest gives about 0; truncation, about -0.3% at twice the error.

    .venv/bin/python bench/bf16_conv_exactness.py                          # this CPU's default ISA
    .venv/bin/python bench/bf16_conv_exactness.py --isa default AVX512_CORE_BF16

Needs only torch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.models import build_model  # noqa: E402

OUTPUTS = ("y", "dx", "dw")  # forward, backward data, backward weights


def conv_shapes(model_name: str, image_size: int = 32) -> list[dict[str, int]]:
    """The model's convolutions: channels in and out, kernel, padding, and input size."""
    model = build_model(model_name).eval()
    shapes: list[dict[str, int]] = []

    def record(conv: torch.nn.Conv2d, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        shapes.append(dict(cin=conv.in_channels, cout=conv.out_channels, k=conv.kernel_size[0],
                           pad=conv.padding[0], hw=inputs[0].shape[-1]))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    return shapes


def make_inputs(shape: dict[str, int], batch: int, seed: int) -> dict[str, torch.Tensor]:
    """bf16 input, weights and output gradient (channels_last), with the weights' usual scale."""
    g = torch.Generator().manual_seed(seed)
    cl = torch.channels_last
    x = torch.randn(batch, shape["cin"], shape["hw"], shape["hw"], generator=g)
    w = torch.randn(shape["cout"], shape["cin"], shape["k"], shape["k"], generator=g)
    w /= (shape["cin"] * shape["k"] ** 2) ** 0.5
    dy = torch.randn(batch, shape["cout"], shape["hw"], shape["hw"], generator=g)
    return {name: t.bfloat16().to(memory_format=cl) for name, t in (("x", x), ("w", w), ("dy", dy))}


def convolve(inputs: dict[str, torch.Tensor], pad: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Forward, backward data and backward weights at `dtype`."""
    x = inputs["x"].to(dtype).requires_grad_()
    w = inputs["w"].to(dtype).requires_grad_()
    y = F.conv2d(x, w, padding=pad)
    y.backward(inputs["dy"].to(dtype))
    return {"y": y.detach(), "dx": x.grad, "dw": w.grad}


def exactness(result: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """(error / rounding, bias): see the module's docstring."""
    exact = exact.double()
    norm = exact.pow(2).sum()
    error = (result.double() - exact).pow(2).sum()
    rounding = (exact.bfloat16().double() - exact).pow(2).sum()
    bias = ((result.double() - exact) * exact).sum() / norm
    return (error / rounding).sqrt().item(), bias.item()


def child(out: Path, model_name: str, batch: int, seed: int) -> None:
    """In the process whose oneDNN ISA was capped: the bf16 results, saved for the parent."""
    results = [convolve(make_inputs(shape, batch, seed + i), shape["pad"], torch.bfloat16)
               for i, shape in enumerate(conv_shapes(model_name))]
    torch.save(results, out)


def run_isa(isa: str, model_name: str, batch: int, seed: int, workdir: Path) -> list[dict[str, torch.Tensor]]:
    out = workdir / f"{isa}.pt"
    env = dict(os.environ)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa != "default":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    subprocess.run([sys.executable, __file__, "--child", str(out), "--model", model_name,
                    "--batch", str(batch), "--seed", str(seed)], env=env, check=True)
    return torch.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", nargs="+", default=["default"],
                        help="ONEDNN_MAX_CPU_ISA values to compare (default: oneDNN's own choice)")
    parser.add_argument("--model", default="net2")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.model, args.batch, args.seed)
        return
    shapes = conv_shapes(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        results = {isa: run_isa(isa, args.model, args.batch, args.seed, Path(tmp)) for isa in args.isa}
    print(f"{args.model}: {len(shapes)} convolutions, batch {args.batch}, bf16 channels_last, torch {torch.__version__}")
    print("each cell: error / bf16 rounding of the exact result (1.00: as exact as bf16 allows), bias")
    print(f"{'convolution':<28}{'out':<4}" + "".join(f"{isa:>28}" for isa in args.isa))
    worst = {isa: 0.0 for isa in args.isa}
    for i, shape in enumerate(shapes):
        exact = convolve(make_inputs(shape, args.batch, args.seed + i), shape["pad"], torch.float64)
        label = f"{shape['cin']}->{shape['cout']} k{shape['k']} {shape['hw']}px"
        for name in OUTPUTS:
            cells = []
            for isa in args.isa:
                ratio, bias = exactness(results[isa][i][name], exact[name])
                worst[isa] = max(worst[isa], ratio)
                cells.append(f"{ratio:14.3f} {100 * bias:+11.4f}%")
            print(f"{label:<28}{name:<4}" + "".join(f"{cell:>28}" for cell in cells))
    for isa in args.isa:
        print(f"{isa}: worst error / rounding {worst[isa]:.3f}")


if __name__ == "__main__":
    main()
