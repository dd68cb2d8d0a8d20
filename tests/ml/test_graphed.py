"""The CUDA-graph step's pieces that run anywhere: SGD's update with a tensor learning rate, the
eligibility rules, and the trainer staying eager on a CPU. The capture itself needs CUDA: it is
checked by bench/gpu_check.py's check_graphed_step on a GPU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ml.config import TrainConfig, from_dict
from ml.graphed import SGDUpdate, forward_backward, why_not_graphed
from ml.precision import FP32_CPU
from ml.trainer import build_optimizer


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _grads(model: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("momentum,nesterov,weight_decay", [(0.9, False, 0.0), (0.9, True, 5e-4), (0.0, False, 1e-3),
                                                             (0.0, False, 0.0)])
def test_sgd_update_matches_torch_sgd_across_a_schedule(momentum, nesterov, weight_decay) -> None:
    reference, ours = _model(), _model()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay)
    our_opt = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay)
    update = SGDUpdate(our_opt, torch.device("cpu"))
    for step in range(6):
        if step == 3:  # the schedule moves the lr: the device tensor must follow
            for opt in (ref_opt, our_opt):
                opt.param_groups[0]["lr"] = 0.02
        _grads(reference, step)
        _grads(ours, step)
        ref_opt.step()
        update.sync_lr()
        update()
    for a, b in zip(reference.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert update.lr.item() == pytest.approx(0.02)
    if momentum:  # the optimizer's own state holds the buffers, so checkpoints see them
        for a, b in zip(ref_opt.state_dict()["state"].values(), our_opt.state_dict()["state"].values()):
            torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=1e-6, atol=1e-7)


def test_sgd_update_diverges_from_sgd_when_the_lr_is_not_synced() -> None:
    # The reason sync_lr exists: a stale device lr is a different training.
    reference, ours = _model(), _model()
    ref_opt, our_opt = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (reference, ours))
    update = SGDUpdate(our_opt, torch.device("cpu"))
    for opt in (ref_opt, our_opt):
        opt.param_groups[0]["lr"] = 0.5
    _grads(reference, 0)
    _grads(ours, 0)
    ref_opt.step()
    update()
    assert not torch.allclose(next(reference.parameters()), next(ours.parameters()))


def _config(**values) -> TrainConfig:
    return from_dict(TrainConfig, {"optimizer": "sgd", "momentum": 0.9, **values})


@pytest.mark.parametrize("kwargs,values,reason", [
    ({"enabled": False}, {}, "cuda_graphs is off"),
    ({"device": torch.device("cpu")}, {}, "need a GPU"),
    ({"compiled": True}, {}, "compile is on"),
    ({"scaler": object()}, {}, "gradient scaler"),
    ({}, {"optimizer": "adam"}, "SGD's (Adam is not)"),
])
def test_why_not_graphed_names_the_reason(kwargs, values, reason) -> None:
    optimizer = build_optimizer(_model(), _config(**values))
    arguments = {"device": torch.device("cuda"), "scaler": None, "compiled": False, "enabled": True, **kwargs}
    assert reason in why_not_graphed(optimizer, **arguments)


def test_why_not_graphed_accepts_the_study_recipe_on_a_gpu() -> None:
    optimizer = build_optimizer(_model(), _config(weight_decay=5e-4, nesterov=True))
    assert why_not_graphed(optimizer, device=torch.device("cuda"), scaler=None, compiled=False, enabled=True) is None


def test_forward_backward_counts_correct_only_when_asked() -> None:
    model = _model()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    loss, correct = forward_backward(model, FP32_CPU, x, y, count_correct=True)
    assert correct.item() == (model(x).argmax(1) == y).sum().item()
    assert loss.requires_grad is False and all(p.grad is not None for p in model.parameters())
    assert forward_backward(copy.deepcopy(model), FP32_CPU, x, y, count_correct=False)[1] is None


def test_trainer_on_cpu_ignores_cuda_graphs_and_says_nothing(synthetic_splits) -> None:
    from ml.trainer import Callback, train

    starts = []

    class KeepStart(Callback):
        def on_train_start(self, info) -> None:
            starts.append(info)

    values = {"epochs": 1, "batch_size": 16, "log_every": 5, "momentum": 0.9, "protocol": "running", "amp": False}
    on = train("task1", from_dict(TrainConfig, values), synthetic_splits, device="cpu", callbacks=[KeepStart()])
    off = train("task1", from_dict(TrainConfig, {**values, "cuda_graphs": False}), synthetic_splits, device="cpu")
    assert on.final == off.final and on.steps == off.steps > 0
    assert starts[0].step_mode == ""  # every CPU step is eager: no event to add to the run


def test_sgd_update_follows_the_lr_after_a_resume_replaces_the_param_groups() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    update = SGDUpdate(optimizer, torch.device("cpu"))
    saved = copy.deepcopy(optimizer.state_dict())
    saved["param_groups"][0]["lr"] = 0.003
    optimizer.load_state_dict(saved)  # new group dicts, as _restore does
    update.sync_lr()
    assert update.lr.item() == pytest.approx(0.003)
