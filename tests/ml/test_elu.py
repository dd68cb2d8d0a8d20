"""ml.models.ELU: torch's ELU through exp for bf16/fp16 on the CPU, to the last bit but near zero, with torch's gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ml.models import ELU, build_model


def _activations(dtype: torch.dtype = torch.bfloat16, shape: tuple[int, ...] = (8, 16, 12, 12)) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(shape) * 3
    x[0, 0, 0, :4] = torch.tensor([0.0, -0.0, 1e-6, -1e-6])  # around 0, where exp(x) - 1 cancels
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_elu_reduced_precision_matches_torch_to_the_last_bit(dtype: torch.dtype) -> None:
    x = _activations(dtype)
    out, stock = ELU()(x), F.elu(x)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    # Equal but for a few values near zero, where fp32's cancellation error (about 1e-7) can tip
    # the rounding: one unit in the last place at most.
    torch.testing.assert_close(out, stock, rtol=torch.finfo(dtype).eps, atol=1e-6)
    assert (out != stock).float().mean() < 1e-3


def _every_value(dtype: torch.dtype) -> torch.Tensor:
    """All 65,536 bit patterns of a 16-bit float dtype: every finite value, ±inf and the NaNs."""
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)


def _through_exp_in_fp32(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """The numerics the bf16 accuracy runs were measured with: fp32 throughout, rounded once at the end.

    alpha 1: max(x, e^min(x, 0) - 1); otherwise alpha * (e^min(x, 0) - 1) + max(x, 0).
    """
    f = x.float()
    expm1 = f.clamp(max=0).exp().sub(1)
    return (torch.maximum(f, expm1) if alpha == 1 else expm1.mul(alpha) + f.clamp(min=0)).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_elu_reduced_precision_every_value_is_the_fp32_formula_rounded_once(dtype: torch.dtype, alpha: float) -> None:
    """Any faster rewrite of the module must keep these bits (the accuracy runs depend on them): every 16-bit value."""
    x = _every_value(dtype)
    out, expected = ELU(alpha=alpha)(x), _through_exp_in_fp32(x, alpha)
    same = (out == expected) | (out.isnan() & expected.isnan())
    assert out.dtype == dtype and bool(same.all()), x[~same][:5]


def test_elu_alpha_scales_the_negative_side() -> None:
    x = _activations()
    torch.testing.assert_close(ELU(alpha=0.5)(x), F.elu(x, alpha=0.5), rtol=0, atol=1e-6)
    assert ELU(alpha=0.5)(torch.tensor([-50.0], dtype=torch.bfloat16)).item() == -0.5


def test_elu_gradient_is_torchs_bit_for_bit() -> None:
    x = _activations().requires_grad_()
    grad = torch.randn_like(x)
    ours, = torch.autograd.grad(ELU()(x), x, grad)
    stock, = torch.autograd.grad(F.elu(x), x, grad)
    assert torch.equal(ours, stock)


def test_elu_extreme_values_keep_their_meaning() -> None:
    x = torch.tensor([float("-inf"), -100.0, float("inf"), float("nan")], dtype=torch.bfloat16)
    out = ELU()(x)
    assert out[:3].tolist() == [-1.0, -1.0, float("inf")]
    assert out[3].isnan()


@pytest.mark.parametrize("x", [_activations(torch.float32), _activations().to(torch.float64)])
def test_elu_full_precision_is_torchs_elu(x: torch.Tensor) -> None:
    """fp32 (amp off, the study's numerics) keeps torch's expm1, exact near zero."""
    assert torch.equal(ELU()(x), F.elu(x))


def test_elu_inplace_is_torchs() -> None:
    x = _activations()
    expected = F.elu(x)
    ELU(inplace=True)(x)
    assert torch.equal(x, expected)


def test_elu_trains_net2_like_torchs_under_bf16_autocast() -> None:
    """One net2 step under CPU bf16 autocast: the same loss and gradients as with nn.ELU."""
    def step(swap: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = build_model("net2", {}, pretrained=False).to(memory_format=torch.channels_last)
        if swap:
            for i, module in enumerate(model):
                if isinstance(module, ELU):
                    model[i] = nn.ELU()
        torch.manual_seed(1)
        x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    ours, stock = step(swap=False), step(swap=True)
    assert sum(isinstance(m, ELU) for m in build_model("net2", {}, pretrained=False)) == 6
    torch.testing.assert_close(ours[0], stock[0], rtol=1e-3, atol=1e-3)
    for a, b in zip(ours[1], stock[1]):
        torch.testing.assert_close(a, b, rtol=0.05, atol=1e-3)


def _aten_ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


def test_elu_reduced_precision_avoids_expm1_and_fp32_keeps_it() -> None:
    """The point of the module: no aten::elu (expm1) at bf16, where ATen's AVX-512 expm1 can run at scalar speed."""
    bf16, fp32 = _activations(), _activations(torch.float32)
    assert not {"aten::elu", "aten::expm1"} & _aten_ops(lambda: ELU()(bf16))
    assert "aten::exp_" in _aten_ops(lambda: ELU()(bf16))
    assert "aten::elu" in _aten_ops(lambda: ELU()(fp32))
