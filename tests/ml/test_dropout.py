"""ml.models.Dropout: the cheaper CPU mask must be the same Bernoulli mask as nn.Dropout's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ml.models import Dropout

N = 400_000  # enough that a drop rate off by 0.005 is more than 6 standard deviations out


def _dropped_share(out: torch.Tensor) -> float:
    return (out == 0).float().mean().item()


@pytest.mark.parametrize("p", [0.3, 0.4, 0.5])
def test_dropout_cpu_mask_drops_p_and_rescales_the_rest(p):
    torch.manual_seed(0)
    out = Dropout(p).train()(torch.ones(N))
    assert abs(_dropped_share(out) - p) < 0.005
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)))
    assert abs(out.mean().item() - 1) < 0.01  # the expectation is unchanged, as with nn.Dropout


def test_dropout_cpu_mask_is_uniform_over_each_of_the_four_draws_in_a_word():
    # One 64-bit draw serves four elements; the top one has only 15 random bits of 16,
    # so each position must still drop half at p = 0.5.
    torch.manual_seed(1)
    out = Dropout(0.5).train()(torch.ones(N))
    for position in range(4):
        assert abs(_dropped_share(out[position::4]) - 0.5) < 0.01, position


def test_dropout_cpu_mask_has_no_correlation_between_neighbours():
    torch.manual_seed(2)
    dropped = (Dropout(0.5).train()(torch.ones(N)) == 0).float()
    both = (dropped[:-1] * dropped[1:]).mean().item()
    assert abs(both - 0.25) < 0.01  # independent draws: P(both dropped) = p²


def test_dropout_same_seed_same_mask_other_seed_other_mask():
    x = torch.randn(64, 32, 16, 16)
    masks = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        masks.append(Dropout(0.4).train()(x) == 0)
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])


def test_dropout_same_seed_same_mask_at_fp32_nchw_and_bf16_channels_last():
    # The bf16-against-fp32 comparison runs the two precisions with one seed: the masks must agree,
    # or the comparison mixes the precision's effect with a different draw of dropout.
    x = torch.randn(64, 32, 16, 16)
    masks = []
    for layout, dtype in ((torch.contiguous_format, torch.float32), (torch.channels_last, torch.bfloat16)):
        torch.manual_seed(7)
        masks.append(Dropout(0.4).train()(x.to(dtype).contiguous(memory_format=layout)) == 0)
    assert masks[1].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(masks[0], masks[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_channels_last_keeps_layout_and_backward_uses_the_same_mask(dtype):
    torch.manual_seed(3)
    x = torch.randn(8, 16, 6, 6).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = Dropout(0.3).train()(x)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    out.sum().backward()
    scale = torch.tensor(1 / 0.7, dtype=dtype)
    expected = torch.where(out != 0, scale, torch.zeros((), dtype=dtype))
    assert torch.equal(x.grad, expected)  # the gradient flows exactly where the forward kept


def test_dropout_eval_mode_is_identity():
    x = torch.randn(4, 8, 5, 5)
    assert torch.equal(Dropout(0.5).eval()(x), x)


def test_dropout_non_dense_input_falls_back_to_torch_and_still_drops():
    torch.manual_seed(4)
    x = torch.ones(2000, 400)[:, ::2]  # strided: a flat mask cannot be laid over it
    out = Dropout(0.5).train()(x)
    assert out.shape == x.shape and abs(_dropped_share(out) - 0.5) < 0.01


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_dropout_edge_rates_match_nn_dropout(p):
    x = torch.randn(3, 7)
    assert torch.equal(Dropout(p).train()(x), nn.Dropout(p).train()(x))

