"""The trainer: protocol, early stopping, schedules, callbacks, determinism, checkpoints, cancellation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ml.batching import BatchLoader, augment_batch, normalize
from ml.config import ConfigError, TrainConfig, from_dict
from ml.models import build_model, get_spec
from ml.trainer import (
    CHECKPOINT_KEYS, Callback, build_optimizer, build_scheduler, eval_schedule, load_checkpoint,
    model_from_checkpoint, should_stop_early, train,
)


def config(model: str = "task1", **overrides) -> TrainConfig:
    values = {**get_spec(model).defaults, "epochs": 2, "log_every": 5, **overrides}
    return from_dict(TrainConfig, values)


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_start(self, info):
        self.calls.append(("start", info))

    def on_step(self, report):
        self.calls.append(("step", report))

    def on_eval(self, report):
        self.calls.append(("eval", report))

    def on_epoch_end(self, report):
        self.calls.append(("epoch", report))

    def on_checkpoint(self, path, step):
        self.calls.append(("checkpoint", step))

    def of(self, kind):
        return [c[1] for c in self.calls if c[0] == kind]


# ---------------------------------------------------------------- early stop ---

@pytest.mark.parametrize("losses, count, expected", [
    ([2.3, 2.0, 1.8, 1.7], 4, False),          # improving
    ([1.0, 1.1, 1.2, 1.3], 4, True),           # rising for 4
    ([1.0, 1.0, 1.0, 1.0], 4, True),           # flat counts as non-decreasing
    ([1.0, 1.1, 1.2], 4, False),               # too few values
    ([1.5, 1.0, 1.1, 1.05, 1.2], 4, False),    # a dip inside the window
    ([2.0, 1.0, 1.1, 1.2, 1.3], 4, True),      # only the last 4 count
    ([1.0, 1.1], 2, True),
    ([2.3, float("nan"), float("nan")], 3, True),  # diverged: NaN counts as +inf
    ([2.3, 2.0, float("nan"), float("nan")], 3, True),
    ([2.3, 2.0, float("nan"), float("nan"), 1.9], 3, False),
    ([1.0, 2.0, 3.0, 4.0, 5.0], 0, False),     # 0 disables
])
def test_should_stop_early_crafted_sequences(losses, count, expected):
    assert should_stop_early(losses, count) is expected


def test_training_stops_early_when_val_loss_rises(synthetic_splits):
    # lr 5 makes the loss blow up at once, so validation loss stops improving.
    result = train("task1", config(lr=5.0, epochs=8, early_stop_count=2, eval_every=0.5), synthetic_splits)
    assert result.status == "early_stopped"
    assert result.steps < 8 * 5


# ------------------------------------------------------------- schedules ---

def _lrs(cfg: TrainConfig, epochs: int) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_multistep_scheduler_halves_at_milestones():
    assert _lrs(config("net2"), 10) == pytest.approx([0.1] * 4 + [0.05] * 4 + [0.025] * 2)


def test_exponential_scheduler_decays_per_epoch():
    assert _lrs(config("net1"), 3) == pytest.approx([0.1, 0.095, 0.09025])


def test_cosine_scheduler_reaches_zero_at_last_epoch():
    lrs = _lrs(config(scheduler="cosine", epochs=4), 5)
    assert lrs[0] == pytest.approx(0.05) and lrs[2] == pytest.approx(0.025) and lrs[4] == pytest.approx(0)


def test_none_scheduler_keeps_lr():
    assert _lrs(config(), 3) == [0.05] * 3


def test_trainer_steps_scheduler_once_per_epoch(synthetic_splits):
    rec = Recorder()
    cfg = config(epochs=3, scheduler="multistep", milestones=[1, 2], gamma=0.5, lr=0.1)
    train("task1", cfg, synthetic_splits, callbacks=[rec])
    assert [e.lr for e in rec.of("epoch")] == pytest.approx([0.05, 0.025, 0.025])


def test_optimizers_follow_config():
    model = torch.nn.Linear(2, 2)
    sgd = build_optimizer(model, config(momentum=0.9, nesterov=True, weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    assert isinstance(build_optimizer(model, config("resnet18")), torch.optim.Adam)


# ------------------------------------------------------------- protocol ---

def test_eval_schedule_every_half_epoch_and_before_training():
    assert sorted(eval_schedule(10, 2, 0.5)) == [0, 5, 10, 15, 20]
    assert sorted(eval_schedule(7, 1, 0.5)) == [0, 4, 7]
    assert sorted(eval_schedule(5, 2, 0.5)) == [0, 3, 5, 8, 10]  # halves round up, consistently
    assert sorted(eval_schedule(10, 1, 1.0)) == [0, 10]


def test_train_reports_through_callbacks(synthetic_splits):
    rec = Recorder()
    result = train("task1", config(), synthetic_splits, callbacks=[rec])
    steps_per_epoch = 5  # 320 images / 64
    assert result.status == "completed" and result.steps == 2 * steps_per_epoch
    evals = rec.of("eval")
    assert [e.step for e in evals] == [0, 3, 5, 8, 10]
    assert [e.epoch for e in evals] == [0, 0.5, 1.0, 1.5, 2.0]
    assert set(evals[0].metrics) == {f"{s}/{m}" for s in ("train", "val", "test") for m in ("loss", "acc")}
    # One step report every log_every (5) steps: the loss is read from the device only then.
    assert [s.step for s in rec.of("step")] == [5, 10]
    assert all(s.images_per_s > 0 and s.lr == 0.05 for s in rec.of("step"))
    assert [e.epoch for e in rec.of("epoch")] == [1, 2]
    assert rec.of("start")[0].total_steps == 10 and rec.of("start")[0].num_train == 320
    assert result.final == evals[-1].metrics
    assert result.best["metrics"]["val/acc"] == max(e.metrics["val/acc"] for e in evals)


def test_train_learns_synthetic_classes(synthetic_splits):
    result = train("task1", config(epochs=3), synthetic_splits)
    assert result.best["metrics"]["val/acc"] > 0.2  # chance is 0.1; the real-data test asks for more
    assert result.final["train/loss"] < result.history[0]["metrics"]["train/loss"]


def test_running_protocol_averages_train_metrics_since_last_eval(synthetic_splits):
    rec = Recorder()
    train("task1", config(protocol="running", epochs=1), synthetic_splits, callbacks=[rec])
    evals = rec.of("eval")
    assert "train/loss" not in evals[0].metrics  # nothing to average before training
    assert all("train/loss" in e.metrics and 0 <= e.metrics["train/acc"] <= 1 for e in evals[1:])


def test_same_seed_gives_same_first_epoch_metrics(synthetic_splits):
    first = train("net1", config("net1", epochs=1, seed=7), synthetic_splits)
    second = train("net1", config("net1", epochs=1, seed=7), synthetic_splits)
    other = train("net1", config("net1", epochs=1, seed=8), synthetic_splits)
    assert _strip_time(first.history) == _strip_time(second.history)
    assert first.history[-1]["metrics"] != other.history[-1]["metrics"]


def _strip_time(history):
    return [{k: v for k, v in h.items() if k != "time"} for h in history]


# ------------------------------------------------- checkpoints and cancel ---

def test_checkpoint_has_fixed_keys_and_loads_safely(synthetic_splits, tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    rec = Recorder()
    train("task1", config(epochs=1), synthetic_splits, checkpoint_path=path, callbacks=[rec])
    state = load_checkpoint(path)  # weights_only=True inside
    assert set(state) == set(CHECKPOINT_KEYS)
    assert state["step"] == 5 and state["epoch"] == 1.0 and len(state["history"]) == 3
    assert state["config"]["model"] == "task1" and state["config"]["train"]["lr"] == 0.05
    assert rec.of("checkpoint") == [0, 3, 5]


def test_model_from_checkpoint_reproduces_final_accuracy(synthetic_splits, tmp_path):
    path = tmp_path / "checkpoint.pt"
    # fp32 on both sides: on a CPU with native bf16 the run evaluates at bf16, and a barely trained
    # model's near-tied logits flip between the two roundings, whatever the checkpoint holds.
    result = train("net1", config("net1", epochs=1, amp=False), synthetic_splits, checkpoint_path=path)
    model, _ = model_from_checkpoint(path)
    x, y = normalize(synthetic_splits.test.images), synthetic_splits.test.labels
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(result.final["test/acc"])


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read checkpoint .*checkpoint.pt"):
        load_checkpoint(path)


class StopAtStep(Callback):
    """A cancel flag raised once training has reached `step` (reports come every step: log_every=1)."""

    def __init__(self, step: int):
        self.step, self.raised = step, False

    def on_step(self, report):
        self.raised = self.raised or report.step >= self.step

    def __call__(self) -> bool:
        return self.raised


def test_cancel_stops_between_steps_and_keeps_checkpoint(synthetic_splits, tmp_path):
    stop = StopAtStep(4)  # one step past the step-3 evaluation
    path = tmp_path / "checkpoint.pt"
    result = train("task1", config(log_every=1), synthetic_splits, should_stop=stop, checkpoint_path=path,
                   callbacks=[stop])
    assert result.status == "cancelled"
    assert result.steps == 4
    assert load_checkpoint(path)["step"] == 3
    assert result.checkpoint == path


def test_resume_after_cancel_continues_history_seamlessly(synthetic_splits, tmp_path):
    cfg = config("net1", epochs=2, seed=3, log_every=1)
    full = train("net1", cfg, synthetic_splits)
    stop = StopAtStep(7)  # mid-way through epoch 2, past the epoch-end evaluation
    path = tmp_path / "checkpoint.pt"
    cut = train("net1", cfg, synthetic_splits, should_stop=stop, callbacks=[stop], checkpoint_path=path)
    assert cut.status == "cancelled" and cut.steps == 7
    assert load_checkpoint(path)["step"] == 5
    resumed = train("net1", cfg, synthetic_splits, checkpoint_path=path, resume_from=path)
    assert resumed.status == "completed" and resumed.steps == full.steps
    assert _strip_time(resumed.history) == _strip_time(full.history)


def test_cancel_during_evaluation_is_prompt(synthetic_splits):
    calls = {"n": 0}

    def stop_during_first_eval() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    result = train("task1", config(), synthetic_splits, should_stop=stop_during_first_eval)
    assert result.status == "cancelled" and result.steps == 0 and result.history == []


# ---------------------------------------------------------- batching ---

def test_batch_loader_covers_every_image_once_per_epoch():
    images, labels = torch.arange(10).view(10, 1, 1, 1).float(), torch.arange(10)
    loader = BatchLoader(images, labels, 3, shuffle=True, seed=1)
    seen = torch.cat([y for _, y in loader.batches(0)])
    assert len(loader) == 4 and sorted(seen.tolist()) == list(range(10))
    assert not torch.equal(seen, torch.cat([y for _, y in loader.batches(1)]))  # reshuffled per epoch
    assert torch.equal(seen, torch.cat([y for _, y in loader.batches(0)]))  # reproducible
    assert torch.equal(torch.cat([y for _, y in loader.batches(0, start=2)]), seen[6:])


def test_normalize_uses_cifar_mean_and_std():
    x = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert x[0, :, 0, 0] == pytest.approx([(1 - 0.4914) / 0.2023, (1 - 0.4822) / 0.1994, (1 - 0.4465) / 0.2010],
                                          rel=1e-5)


def test_augment_batch_crops_and_flips_whole_batch():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    again = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    outs = [augment_batch(x, torch.Generator().manual_seed(s)) for s in range(8)]
    assert any(not torch.equal(o, x) for o in outs)
    # Every non-padding pixel comes from the source image (a crop/flip never invents values).
    values = set(x.flatten().tolist()) | {0.0}
    assert set(outs[3].flatten().tolist()) <= values


def test_augmented_training_runs(synthetic_splits):
    result = train("task1", config(epochs=1), synthetic_splits, augment=True)
    assert result.status == "completed"


# ------------------------------------------------------------- config ---

@pytest.mark.parametrize("values, field", [
    ({"lr": 0}, "lr"),
    ({"lr": -1}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 4097}, "batch_size"),
    ({"epochs": 1001}, "epochs"),
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"scheduler": "step"}, "scheduler"),
    ({"milestones": [8, 4]}, "milestones"),
    ({"milestones": [4, 4]}, "milestones"),
    ({"nesterov": True, "momentum": 0}, "nesterov"),
    ({"learning_rate": 0.1}, "learning_rate"),
    ({"lr": "fast"}, "lr"),
    ({"epochs": 2.5}, "epochs"),
])
def test_invalid_train_config_names_the_field(values, field):
    with pytest.raises(ConfigError) as err:
        from_dict(TrainConfig, values)
    assert field in err.value.errors


def test_invalid_optimizer_lists_choices():
    with pytest.raises(ConfigError) as err:
        from_dict(TrainConfig, {"optimizer": "rmsprop"})
    assert "sgd, adam" in err.value.errors["optimizer"]


def test_config_round_trips_through_dict():
    cfg = config("net2")
    assert from_dict(TrainConfig, dataclasses.asdict(cfg)) == cfg


def test_cuda_request_without_cuda_is_clear(synthetic_splits):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        train("task1", config(epochs=1), synthetic_splits, device="cuda")


def test_build_model_seeded_by_trainer_is_deterministic():
    torch.manual_seed(0)
    a = build_model("task1")
    torch.manual_seed(0)
    b = build_model("task1")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_batch_loader_drop_last_skips_incomplete_batch():
    images, labels = torch.zeros(10, 1, 1, 1), torch.arange(10)
    loader = BatchLoader(images, labels, 3, shuffle=True, drop_last=True)
    sizes = [len(y) for _, y in loader.batches(0)]
    assert len(loader) == 3 and sizes == [3, 3, 3]
    # Fewer images than one batch: keep them rather than train on nothing.
    assert len(BatchLoader(images[:2], labels[:2], 3, shuffle=True, drop_last=True)) == 1


@pytest.mark.parametrize("batch_size,device,pixels,expected", [
    (64, "cpu", 32 * 32, 256),  # the CPU keeps 4x the training batch
    (64, "cuda", 32 * 32, 1024),  # a GPU takes 1,024 CIFAR images a batch
    (1024, "cuda", 32 * 32, 2048),  # never more than MAX_EVAL_BATCH
    (32, "cuda", 256 * 256, 128),  # resnet18 upsamples x8: 64x the pixels, so 4x its batch stays
    (8, "cuda", 64 * 64, 256),  # 64 px images: a quarter of the CIFAR batch
])
def test_eval_batch_size_grows_on_a_gpu_by_input_pixels(batch_size, device, pixels, expected) -> None:
    from ml.trainer import eval_batch_size

    assert eval_batch_size(batch_size, torch.device(device), pixels) == expected
