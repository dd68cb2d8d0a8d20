"""The CUDA-graph step's pieces that run anywhere: SGD's update with a tensor learning rate, the
eligibility rules, and the trainer staying eager on a CPU. The capture itself needs CUDA: it is
checked by bench/gpu_check.py's check_graphed_step on a GPU."""

from __future__ import annotations

import copy
import warnings

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
    ({"scaler": object()}, {}, "gradient scaler"),
    ({}, {"optimizer": "adam"}, "SGD's (Adam is not)"),
])
def test_why_not_graphed_names_the_reason(kwargs, values, reason) -> None:
    optimizer = build_optimizer(_model(), _config(**values))
    arguments = {"device": torch.device("cuda"), "scaler": None, "enabled": True, **kwargs}
    assert reason in why_not_graphed(optimizer, **arguments)


def test_why_not_graphed_accepts_the_study_recipe_on_a_gpu() -> None:
    optimizer = build_optimizer(_model(), _config(weight_decay=5e-4, nesterov=True))
    assert why_not_graphed(optimizer, device=torch.device("cuda"), scaler=None, enabled=True) is None


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


# ------------------------------------------------------- GraphedStep's flow ---
# CUDA cannot run here, so these fake its stream and graph calls (and only those) to check
# GraphedStep's bookkeeping: warm-ups, one capture, replays, odd batches, and the fallback.
# The real capture and replay are checked on a GPU by bench/gpu_check.py (check_graphed_step).

class _FakeGraph:
    replays = 0
    body = None  # what a replay re-runs: the test sets it to the captured batch draw

    def replay(self) -> None:
        _FakeGraph.replays += 1
        if _FakeGraph.body is not None:
            _FakeGraph.body()


def _fake_cuda(monkeypatch, capture_fails: bool | int) -> list[str]:
    """The fake CUDA calls; `capture_fails`: every capture fails (True), or that many first ones (an int)."""
    import contextlib

    class Stream:
        def __init__(self, *args, **kwargs) -> None: ...
        def wait_stream(self, other) -> None: ...

    captured: list[str] = []

    @contextlib.contextmanager
    def graph(cuda_graph, capture_error_mode="global"):
        captured.append(capture_error_mode)
        if capture_fails is True or len(captured) <= capture_fails:
            raise RuntimeError("operation not permitted when stream is capturing")
        yield

    _FakeGraph.replays, _FakeGraph.body = 0, None
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    return captured


def _loader(num_images: int = 44, batch_size: int = 8, augment: bool = True):
    """uint8 images on the CPU standing in for the GPU's: 5 full batches of 8 and one of 4."""
    from ml.batching import BatchLoader

    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (num_images, 3, 4, 4), dtype=torch.uint8, generator=g)
    return BatchLoader(images, torch.randint(0, 3, (num_images,), generator=g), batch_size, shuffle=True, seed=2,
                       augment=augment)


def _graphed_step(notices: list[str] | None = None, gather_in_graph: bool = True,
                  sums: list[tuple[torch.Tensor, int]] | None = None):
    from ml.graphed import GraphedStep

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    eager_calls = []

    def eager(x, y):
        eager_calls.append(len(y))
        optimizer.zero_grad(set_to_none=True)
        outputs = forward_backward(model, FP32_CPU, x, y, count_correct=True)
        optimizer.step()
        return outputs

    step = GraphedStep(model, optimizer, FP32_CPU, torch.device("cpu"), loader=_loader(), count_correct=True,
                       eager_step=eager, notify=(notices if notices is not None else []).append,
                       accumulate=lambda loss, correct, images: (sums if sums is not None else []).append(
                           (loss, images)),
                       gather_in_graph=gather_in_graph)
    return step, eager_calls


def test_graphed_step_warms_up_then_captures_once_and_replays(monkeypatch) -> None:
    from ml.graphed import WARMUP_STEPS

    captured = _fake_cuda(monkeypatch, capture_fails=False)
    notices: list[str] = []
    sums: list[tuple[torch.Tensor, int]] = []
    step, eager_calls = _graphed_step(notices, sums=sums)
    scheduler = torch.optim.lr_scheduler.StepLR(step.optimizer, step_size=1)
    plan = step.loader.plan(0)
    weights = step.model[1].weight.detach().clone()
    for batch in range(WARMUP_STEPS + 2):
        loss, correct = step(plan, batch)
    # The warm-ups run the graph's own step eagerly (and train: the weights moved); then every step replays.
    assert eager_calls == [] and not torch.equal(weights, step.model[1].weight)
    assert captured == ["thread_local"] and _FakeGraph.replays == 2
    assert loss is step.static_loss and correct is step.static_correct
    # The warm-ups add their losses from the host; the capture records its add into the graph once,
    # and the replays launch no add of their own.
    assert [images for _, images in sums] == [8] * (WARMUP_STEPS + 1) and sums[-1][0] is step.static_loss
    with warnings.catch_warnings():  # the warm-ups stepped torch's optimizer, as the schedule expects
        warnings.simplefilter("error")
        scheduler.step()
    step(plan, 5)  # the epoch's last batch has 4 images: a graph made for 8 cannot replay it
    assert eager_calls[-1] == 4 and _FakeGraph.replays == 2 and sums[-1][1] == 4
    assert "one CUDA graph replay each, batches drawn inside the graph" in step.describe()
    assert notices == []  # nothing to add to the run's history when the graph is in use


def test_graphed_step_replays_draw_the_batches_the_eager_steps_would(monkeypatch) -> None:
    # A replay re-runs the captured kernels on the same buffers, which the fake does by calling the
    # captured draw again: the batches it gets must be the eager steps' own, epoch after epoch.
    from ml.graphed import WARMUP_STEPS

    _fake_cuda(monkeypatch, capture_fails=False)
    step, _ = _graphed_step()
    drawn: list[tuple[torch.Tensor, torch.Tensor]] = []
    _FakeGraph.body = lambda: drawn.append(step.feed.next_batch())
    expected = []
    for epoch in range(3):
        plan = step.loader.plan(epoch)
        for batch in range(len(step.loader)):
            step(plan, batch)
            replayed = epoch > 0 or batch >= WARMUP_STEPS
            if replayed and batch < len(step.loader) - 1:  # not the short last batch: that one is eager
                expected.append(step.loader.batch(plan, step.loader.batch_window(batch)))
    assert len(drawn) == len(expected) == _FakeGraph.replays == 2 + 5 + 5
    for (x, y), (ex, ey) in zip(drawn, expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_graph_feed_moves_its_cursor_only_when_the_graph_did_not(monkeypatch) -> None:
    from ml.graphed import GraphFeed

    loader = _loader()
    feed = GraphFeed(loader)
    plan = loader.plan(0)
    feed.point_at(plan, 2)
    assert feed.cursor.item() == 16
    feed.next_batch()  # what a replay does: the cursor moves on inside the graph
    feed.cursor.fill_(-1)  # a marker: the host must not touch the cursor for the batch it expects
    feed.point_at(plan, 3)
    assert feed.cursor.item() == -1
    feed.point_at(plan, 1)  # after an eager step, or a resume: the host moves it
    assert feed.cursor.item() == 8
    order = feed.order.clone()
    feed.point_at(loader.plan(1), 0)  # a new epoch: its order and draws are copied in
    assert feed.cursor.item() == 0 and not torch.equal(order, feed.order)
    assert torch.equal(feed.order, loader.plan(1).order)


def test_graph_feed_wraps_past_the_epoch_end_instead_of_reading_out_of_bounds() -> None:
    # gpu_check replays the graph on its own after training: the positions must stay in range.
    from ml.graphed import GraphFeed

    loader = _loader(num_images=16, batch_size=8, augment=False)
    feed = GraphFeed(loader)
    plan = loader.plan(0)
    feed.point_at(plan, 0)
    batches = [feed.next_batch()[1] for _ in range(4)]
    assert torch.equal(batches[2], batches[0]) and torch.equal(batches[3], batches[1])


def test_graphed_step_with_pinned_images_copies_each_batch_into_the_graph(monkeypatch) -> None:
    _fake_cuda(monkeypatch, capture_fails=False)
    step, _ = _graphed_step(gather_in_graph=False)
    assert step.feed is None
    plan = step.loader.plan(0)
    for batch in range(5):
        step(plan, batch)
    x, y = step.loader.batch(plan, step.loader.batch_window(4))
    assert torch.equal(step.static_x, x) and torch.equal(step.static_y, y)
    assert "gathered from pinned host memory" in step.describe()


def test_graphed_step_falls_back_to_eager_when_the_capture_fails(monkeypatch) -> None:
    from ml.graphed import WARMUP_STEPS

    captured = _fake_cuda(monkeypatch, capture_fails=True)
    notices: list[str] = []
    step, eager_calls = _graphed_step(notices)
    plan = step.loader.plan(0)
    for batch in range(WARMUP_STEPS + 2):
        loss, _ = step(plan, batch)
    # Tried with the batch drawn in the graph, then copied in; never again after that.
    assert len(captured) == 2 and _FakeGraph.replays == 0 and step.feed is None
    assert len(eager_calls) == 2 and torch.isfinite(loss)  # the capture's step and the one after it
    assert step.failed.startswith("RuntimeError") and "capture failed" in step.describe()
    assert notices == [step.describe()]  # the run's history says its steps went eager, once
    assert all(p.grad is not None for p in step.model.parameters())  # the eager steps after it still train


def test_graphed_step_copies_batches_in_when_drawing_them_in_the_graph_fails(monkeypatch) -> None:
    # The in-graph draw is the newer path: if a GPU refuses to capture it, the step is captured again
    # with each batch copied in (what pinned data uses) rather than giving the graph up altogether.
    from ml.graphed import WARMUP_STEPS

    captured = _fake_cuda(monkeypatch, capture_fails=1)
    notices: list[str] = []
    step, eager_calls = _graphed_step(notices)
    plan = step.loader.plan(0)
    for batch in range(WARMUP_STEPS + 2):
        step(plan, batch)
    assert len(captured) == 2 and step.failed is None and step.feed is None and step.graph is not None
    assert eager_calls == [] and _FakeGraph.replays == 2
    x, y = step.loader.batch(plan, step.loader.batch_window(WARMUP_STEPS + 1))
    assert torch.equal(step.static_x, x) and torch.equal(step.static_y, y)  # the last replay's batch
    assert notices == [step.describe()]
    assert "copied in (drawing them inside the graph failed: RuntimeError: operation not permitted" in notices[0]


def test_graphed_step_captures_a_compiled_model_without_recompiling(monkeypatch) -> None:
    # Dynamo guards on autocast's cast-cache flag, which the capture turns off: warm-ups run with it
    # on would make the capture recompile, and compiling inside a CUDA graph capture fails it.
    import torch._dynamo

    from ml.graphed import WARMUP_STEPS
    from ml.precision import Precision

    _fake_cuda(monkeypatch, capture_fails=False)
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    bf16 = Precision("bf16", "cpu", channels_last=False, grad_scaler=False, reason="autocast on, as on a GPU")
    step, _ = _graphed_step()
    step.model.compile(backend="eager")
    step.precision = bf16
    plan = step.loader.plan(0)
    for batch in range(WARMUP_STEPS + 1):
        step(plan, batch)
    assert step.failed is None and step.graph is not None
    torch._dynamo.reset()


def test_trainer_fp16_with_scaler_steps_eagerly_and_trains(synthetic_splits, monkeypatch) -> None:
    # The scaler's path through eager_step (pre-Ampere GPUs), run here on the CPU's fp16 autocast.
    import ml.trainer as trainer
    from ml.precision import Precision

    fp16 = Precision("fp16", "cpu", channels_last=False, grad_scaler=True, reason="forced by the test")
    monkeypatch.setattr(trainer, "choose_precision", lambda device, amp: fp16)
    scaled = []
    original = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, loss: scaled.append(1) or original(self, loss))
    values = {"epochs": 1, "batch_size": 16, "log_every": 5, "protocol": "running", "eval_every": 0.5}
    result = trainer.train("task1", from_dict(TrainConfig, values), synthetic_splits, device="cpu")
    assert result.status == "completed" and len(scaled) == result.steps > 0
    first, last = result.history[0]["metrics"], result.history[-1]["metrics"]
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values())
    assert last["train/loss"] > 0 and first["val/loss"] != last["val/loss"]
