"""The trainer: the study's protocol, reported through callbacks, with checkpoints and cancellation.

Shaped after torchvision's references/classification/train.py (`train_one_epoch`
and `evaluate` are plain functions) and airbench (the data is a tensor on the
device, batches are index permutations, and nothing syncs the host per step:
losses accumulate on the device and are read every `log_every` steps).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ml.batching import BatchLoader, EpochPlan, data_placement, place
from ml.config import ConfigError, TrainConfig, from_dict, to_dict, validate
from ml.files import atomic_write
from ml.graphed import GraphedStep, StepOutputs, forward_backward, why_not_graphed
from ml.models import build_model, count_parameters
from ml.precision import FP32_CPU, Precision, choose_precision

SPLITS = ("train", "val", "test")
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "config", "history", "rng")


# ------------------------------------------------------------------ reports ---

@dataclass
class TrainStart:
    total_steps: int
    steps_per_epoch: int
    start_step: int  # > 0 when resuming
    parameters: int
    trainable_parameters: int
    device: str
    num_train: int
    num_val: int
    num_test: int
    precision: str = "fp32"  # Precision.describe(): what the run computes at, and why
    data_placement: str = ""  # where the training data sits (device memory, or pinned host memory and why)
    step_mode: str = ""  # on a GPU: whether training steps replay a CUDA graph, and why not


@dataclass
class StepReport:
    step: int
    epoch: float
    loss: float  # mean training loss over the steps since the last report
    lr: float
    images_per_s: float
    total_steps: int


@dataclass
class EvalReport:
    step: int
    epoch: float
    metrics: dict[str, float]  # "train/loss", "val/acc", …; accuracies are fractions
    is_best: bool


@dataclass
class EpochReport:
    epoch: int  # epochs completed
    step: int
    lr: float
    elapsed_s: float


class TrainingCancelled(Exception):
    """Raised inside the loop when `should_stop` says so; `train` turns it into status 'cancelled'."""


class Callback:
    """Override what you need. Every hook runs on the training thread, between steps."""

    def on_train_start(self, info: TrainStart) -> None: ...
    def on_step(self, report: StepReport) -> None: ...
    def on_eval(self, report: EvalReport) -> None: ...
    def on_epoch_end(self, report: EpochReport) -> None: ...
    def on_checkpoint(self, path: Path, step: int) -> None: ...
    def on_notice(self, message: str) -> None: ...  # a change of course worth a line in the run's history


@dataclass
class TrainResult:
    status: str  # "completed" | "early_stopped" | "cancelled"
    history: list[dict[str, Any]]  # one entry per evaluation: {"step", "epoch", "metrics"}
    final: dict[str, float]
    best: dict[str, Any]  # the evaluation with the best val/acc: {"step", "epoch", "metrics"}
    steps: int
    wall_time_s: float
    parameters: int
    checkpoint: Path | None = None


# ------------------------------------------------------------- primitives ---

def resolve_device(preference: str | None = None) -> torch.device:
    """CUDA when available (or asked for), else CPU."""
    if preference in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but no CUDA device is available")
    return torch.device(preference)


def should_stop_early(val_losses: list[float], count: int) -> bool:
    """True when the last `count` validation losses are non-decreasing (none is lower than the one before)."""
    if count <= 0 or len(val_losses) < count:
        return False
    # A diverged run (NaN loss) is as bad as it gets: count NaN as +inf so it stops.
    window = [math.inf if math.isnan(v) else v for v in val_losses[-count:]]
    return all(b >= a for a, b in zip(window, window[1:]))


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.nesterov)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule, stepped once per epoch ('none' is a constant schedule)."""
    sched = torch.optim.lr_scheduler
    if config.scheduler == "none":
        return sched.LambdaLR(optimizer, lambda epoch: 1.0)
    if config.scheduler == "exponential":
        return sched.ExponentialLR(optimizer, gamma=config.gamma)
    if config.scheduler == "multistep":
        return sched.MultiStepLR(optimizer, milestones=config.milestones, gamma=config.gamma)
    if config.scheduler == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=config.epochs)
    raise ValueError(f"unknown scheduler {config.scheduler!r}")


def eval_schedule(steps_per_epoch: int, epochs: int, every: float) -> dict[int, float]:
    """Step → nominal epoch of each evaluation: before training, every `every` epochs, and at the end.

    The nominal epoch (0.5, 1.0, 1.5, …) is what the study plots, whatever the rounding of the step.
    """
    total = steps_per_epoch * epochs
    points = {0: 0.0}
    # At least one training step between evaluations, so the loop below runs at most `total` times
    # whatever `every` is (a tiny one, e.g. 1e-300, would otherwise never reach `total`).
    every = max(every, 1 / max(steps_per_epoch, 1))
    for k in range(1, math.ceil(epochs / every) + 1):
        step = math.floor(k * every * steps_per_epoch + 0.5)  # round half up
        if step >= total:
            break
        points.setdefault(max(step, 1), round(k * every, 6))
    points[total] = float(epochs)
    return points


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, *, precision: Precision = FP32_CPU,
             should_stop: Callable[[], bool] | None = None) -> dict[str, float]:
    """Mean loss and accuracy over every batch of `loader`, with one host sync at the end.

    The forward pass runs at the training's `precision`; loss and accuracy accumulate in fp32/int64.
    `should_stop` is checked between batches too: a full pass over the training set
    takes many seconds on a CPU, longer than a cancel may wait.
    """
    was_training = model.training
    model.eval()
    device = loader.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for x, y in loader.batches():
        if should_stop is not None and should_stop():
            model.train(was_training)
            raise TrainingCancelled
        with precision.autocast():
            out = model(precision.prepare_input(x))
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    n = max(loader.num_images, 1)
    return {"loss": loss_sum.item() / n, "acc": correct.item() / n}


# ------------------------------------------------------------------- state ---

@dataclass
class _Run:
    """Everything the training loop carries between steps."""

    config: TrainConfig
    model_name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loaders: dict[str, BatchLoader]
    callbacks: list[Callback]
    should_stop: Callable[[], bool]
    checkpoint_path: Path | None
    device: torch.device
    eval_at: dict[int, float]  # step → nominal epoch
    steps_per_epoch: int
    total_steps: int
    parameters: int
    precision: Precision = FP32_CPU
    data_placement: str = ""
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    graphed: GraphedStep | None = None  # on a GPU: the step replayed as a CUDA graph
    step_mode: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    # Device-side sums since the last report / evaluation (no host sync per step), made once and
    # zeroed in place: a captured CUDA graph adds into them.
    report_loss: torch.Tensor | None = None
    report_steps: int = 0
    report_images: int = 0
    report_time: float = 0.0
    since_eval_loss: torch.Tensor | None = None
    since_eval_correct: torch.Tensor | None = None
    since_eval_images: int = 0
    start_time: float = 0.0
    time_offset: float = 0.0  # training time before a resume

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def epoch_at(self, step: int) -> float:
        return step / self.steps_per_epoch

    def elapsed(self) -> float:
        """Seconds of training so far, resumed segments included."""
        return self.time_offset + time.perf_counter() - self.start_time

    def emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)


def _zero(device: torch.device, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros((), device=device, dtype=dtype)


def eager_step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> StepOutputs:
    """One optimizer step, launched op by op; the loss (and correct count) stay on the device."""
    count_correct = run.config.protocol == "running"
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is None:
        outputs = forward_backward(run.model, run.precision, x, y, count_correct=count_correct)
        run.optimizer.step()
    else:  # fp16: scale the loss so that small gradients do not underflow
        outputs = forward_backward(run.model, run.precision, x, y, count_correct=count_correct,
                                   scale=run.scaler.scale)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    return outputs


def accumulate(run: _Run, loss: torch.Tensor, correct: torch.Tensor | None, images: int) -> None:
    """Add a step's loss (and correct count) into the run's sums on the device, in place: a CUDA
    graph captures these adds with its step, so a replay launches nothing else."""
    run.report_loss += loss
    if correct is not None:
        run.since_eval_loss += loss * images
        run.since_eval_correct += correct


def train_step(run: _Run, plan: EpochPlan, batch: int) -> None:
    """Batch `batch` of the epoch `plan`: one optimizer step, replayed as a CUDA graph where it can be
    (the graph adds its loss into the run's sums itself); no host sync."""
    loader = run.loaders["train"]
    window = loader.batch_window(batch)
    images = window.stop - window.start
    if run.graphed is not None:
        run.graphed(plan, batch)
    else:
        accumulate(run, *eager_step(run, *loader.batch(plan, window)), images)
    run.step += 1
    run.report_steps += 1
    run.report_images += images
    if run.config.protocol == "running":
        run.since_eval_images += images


def _report_step(run: _Run) -> None:
    """Read the accumulated loss (the one host sync every `log_every` steps) and report it."""
    now = time.perf_counter()
    loss = run.report_loss.item() / max(run.report_steps, 1)
    images_per_s = run.report_images / max(now - run.report_time, 1e-9)
    run.emit("on_step", StepReport(step=run.step, epoch=run.epoch_at(run.step), loss=loss, lr=run.lr,
                                   images_per_s=images_per_s, total_steps=run.total_steps))
    run.report_loss.zero_()  # in place: a captured CUDA graph adds into this very tensor
    run.report_steps, run.report_images, run.report_time = 0, 0, now


def _evaluate_all(run: _Run) -> dict[str, float]:
    """Metrics on every split, by the configured protocol."""
    metrics: dict[str, float] = {}
    for split in SPLITS:
        if split == "train" and run.config.protocol == "running":
            if run.since_eval_images == 0:
                continue  # before training the running protocol has nothing to average
            metrics["train/loss"] = run.since_eval_loss.item() / run.since_eval_images
            metrics["train/acc"] = run.since_eval_correct.item() / run.since_eval_images
            continue
        result = evaluate(run.model, run.loaders[f"{split}_eval"], precision=run.precision,
                          should_stop=run.should_stop)
        metrics[f"{split}/loss"], metrics[f"{split}/acc"] = result["loss"], result["acc"]
    run.since_eval_loss.zero_()  # in place, as the report's sum
    run.since_eval_correct.zero_()
    run.since_eval_images = 0
    return metrics


def _best(history: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [h for h in history if "val/acc" in h["metrics"]]
    return max(scored, key=lambda h: h["metrics"]["val/acc"]) if scored else {}


def evaluate_and_checkpoint(run: _Run) -> bool:
    """Evaluate, record, checkpoint; True when early stopping says to stop."""
    began = time.perf_counter()
    metrics = _evaluate_all(run)
    entry = {"step": run.step, "epoch": run.eval_at.get(run.step, run.epoch_at(run.step)), "time": run.elapsed(),
             "metrics": metrics}
    run.history.append(entry)
    is_best = _best(run.history) is entry
    run.emit("on_eval", EvalReport(step=run.step, epoch=entry["epoch"], metrics=metrics, is_best=is_best))
    if run.checkpoint_path is not None:
        save_checkpoint(run.checkpoint_path, checkpoint_dict(run))
        run.emit("on_checkpoint", run.checkpoint_path, run.step)
    # Evaluation time is not training time: keep it out of the next images/s report.
    run.report_time += time.perf_counter() - began
    val_losses = [h["metrics"]["val/loss"] for h in run.history if "val/loss" in h["metrics"]]
    return should_stop_early(val_losses, run.config.early_stop_count)


def train_one_epoch(run: _Run, epoch: int, start_batch: int = 0) -> bool:
    """Train `epoch` from `start_batch`, evaluating at the scheduled steps.

    Returns True when early stopping ends training; raises TrainingCancelled.
    """
    run.model.train()
    last_batch = run.steps_per_epoch - 1
    plan = run.loaders["train"].plan(epoch)
    for batch in range(start_batch, run.steps_per_epoch):
        if run.should_stop():
            raise TrainingCancelled
        train_step(run, plan, batch)
        if run.step % run.config.log_every == 0:
            _report_step(run)
        if batch == last_batch:
            # Step the schedule before the epoch-end evaluation, so that its checkpoint
            # is the exact state at which the next epoch starts.
            run.scheduler.step()
        if run.step in run.eval_at and evaluate_and_checkpoint(run):
            return True
    return False


# -------------------------------------------------------------- checkpoints ---

def checkpoint_dict(run: _Run) -> dict[str, Any]:
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": run.eval_at.get(run.step, run.epoch_at(run.step)),
        "step": run.step,
        "config": {"model": run.model_name, "train": to_dict(run.config)},
        "history": run.history,
        "rng": torch.get_rng_state(),
        **({"scaler": run.scaler.state_dict()} if run.scaler is not None else {}),
    }


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, so that a reader or a crash never sees half a file."""
    with atomic_write(path) as file:
        torch.save(state, file)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with torch's safe unpickler: tensors and plain containers only."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    missing = [k for k in ("model", "step", "config") if k not in state]
    if missing:
        raise ValueError(f"{path} is not a trainboard checkpoint (missing {', '.join(missing)})")
    return state


def model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was saved from (ImageNet weights are not needed: the state replaces them)."""
    state = load_checkpoint(path, map_location)
    config = from_dict(TrainConfig, state["config"]["train"])
    model = build_model(state["config"]["model"], config.model_options, pretrained=False)
    model.load_state_dict(state["model"])
    return model.eval(), state


# --------------------------------------------------------------------- fit ---

# On a GPU an evaluation batch holds up to this many model-input pixels (1,024 images of 32 px):
# evaluation keeps no activations for a backward pass, and at batch 64 a step's launches, not its
# arithmetic, bound the GPU, so fewer and larger batches are faster. (At 256 images a batch, the
# full protocol's 21 evaluations of net2 took 8.9 s on an H200, longer than its 10 epochs of training.)
GPU_EVAL_PIXELS = 1024 * 32 * 32
MAX_EVAL_BATCH = 2048


def eval_batch_size(batch_size: int, device: torch.device, input_pixels: int) -> int:
    """Images per evaluation batch: 4× the training batch, and on a GPU up to GPU_EVAL_PIXELS of input."""
    size = min(MAX_EVAL_BATCH, batch_size * 4)
    if device.type == "cuda":
        size = max(size, min(MAX_EVAL_BATCH, GPU_EVAL_PIXELS // max(input_pixels, 1)))
    return size


def _loaders(splits: Any, config: TrainConfig, device: torch.device, augment: bool,
             upsample: int = 1) -> tuple[dict[str, BatchLoader], str]:
    """Every split moved once to the device as uint8 (normalised per batch there), and where it went.

    Training batches shuffle, evaluation ones don't. `upsample` is the model's own input
    scaling (resnet18's), which multiplies what an evaluation batch holds.
    """
    height, width = splits.train.images.shape[-2:]
    eval_batch = eval_batch_size(config.batch_size, device, height * width * upsample ** 2)
    data_bytes = sum(getattr(splits, s).images.nbytes for s in SPLITS)
    placement, note = data_placement(data_bytes, device)
    tensors = {s: (place(getattr(splits, s).images, device, placement), getattr(splits, s).labels) for s in SPLITS}
    loaders = {f"{s}_eval": BatchLoader(*tensors[s], eval_batch, shuffle=False, device=device) for s in SPLITS}
    loaders["train"] = BatchLoader(*tensors["train"], config.batch_size, shuffle=True, device=device,
                                   seed=config.seed, augment=augment, drop_last=config.drop_last)
    return loaders, note


def train(model_name: str, config: TrainConfig, splits: Any, *, device: str | torch.device | None = None,
          callbacks: Iterable[Callback] = (), should_stop: Callable[[], bool] | None = None,
          checkpoint_path: str | Path | None = None, resume_from: str | Path | None = None,
          augment: bool = False, allow_download: bool = False) -> TrainResult:
    """Train `model_name` on `splits` (train/val/test ImageSets) by the study's protocol.

    Evaluates before training and every `config.eval_every` epochs, checkpoints at
    each evaluation, stops early on the validation loss, and checks `should_stop`
    between steps for cooperative cancellation. `resume_from` continues a run from
    its checkpoint, history included. `augment` turns on random crop + flip batches;
    `allow_download` lets resnet18 fetch its ImageNet weights when not cached.
    """
    validate(config)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    torch.manual_seed(config.seed)
    model = build_model(model_name, config.model_options, pretrained=config.pretrained,
                        allow_download=allow_download).to(device)
    precision = choose_precision(device, config.amp)
    model = precision.prepare_model(model)
    if config.compile:
        model.compile()  # in place: state_dict keys stay those of the plain model
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    upsample = getattr(model, "upsample", 1)  # resnet18 scales its input up inside forward
    loaders, data_note = _loaders(splits, config, device, augment,
                                  upsample=upsample if isinstance(upsample, int) else 1)
    steps_per_epoch = len(loaders["train"])
    check_batch_fits(config, len(splits.train))
    run = _Run(config=config, model_name=model_name, model=model, optimizer=optimizer, scheduler=scheduler,
               loaders=loaders, callbacks=list(callbacks), should_stop=should_stop or (lambda: False),
               checkpoint_path=Path(checkpoint_path) if checkpoint_path else None, device=device,
               eval_at=eval_schedule(steps_per_epoch, config.epochs, config.eval_every),
               steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * config.epochs,
               parameters=count_parameters(model), precision=precision, scaler=precision.make_scaler(),
               data_placement=data_note)
    _plan_steps(run)
    if resume_from is not None:
        _restore(run, load_checkpoint(resume_from, map_location=device))
    return _fit(run, splits)


def _plan_steps(run: _Run) -> None:
    """On a GPU, replay the training step as a CUDA graph when it can be; say which, and why."""
    if run.device.type != "cuda":
        return  # nothing to say on a CPU: its steps are always eager
    why_not = why_not_graphed(run.optimizer, device=run.device, scaler=run.scaler,
                              enabled=run.config.cuda_graphs)
    if why_not is not None:
        run.step_mode = f"training steps: eager ({why_not})"
        return
    run.graphed = GraphedStep(run.model, run.optimizer, run.precision, run.device, loader=run.loaders["train"],
                              count_correct=run.config.protocol == "running",
                              eager_step=lambda x, y: eager_step(run, x, y),
                              accumulate=lambda loss, correct, images: accumulate(run, loss, correct, images),
                              notify=lambda message: run.emit("on_notice", message))
    run.step_mode = run.graphed.describe()


def check_batch_fits(config: TrainConfig, num_train: int) -> None:
    """ConfigError naming both numbers when not one full training batch fits in the split."""
    if config.batch_size > num_train:
        raise ConfigError({"batch_size": f"batch_size {config.batch_size} is larger than the training split "
                                         f"({num_train} images): lower batch_size or train on more images"})


def _restore(run: _Run, state: dict[str, Any]) -> None:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.step, run.history = int(state["step"]), list(state["history"])
    run.time_offset = run.history[-1].get("time", 0.0) if run.history else 0.0
    if run.scaler is not None and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    if "rng" in state:
        torch.set_rng_state(state["rng"].cpu())


def _fit(run: _Run, splits: Any) -> TrainResult:
    run.start_time = run.report_time = time.perf_counter()
    run.report_loss, run.since_eval_loss = _zero(run.device), _zero(run.device)
    run.since_eval_correct = _zero(run.device, torch.long)
    run.emit("on_train_start", TrainStart(
        total_steps=run.total_steps, steps_per_epoch=run.steps_per_epoch, start_step=run.step,
        parameters=run.parameters, trainable_parameters=count_parameters(run.model, trainable_only=True),
        device=str(run.device), num_train=len(splits.train), num_val=len(splits.val), num_test=len(splits.test),
        precision=run.precision.describe(), data_placement=run.data_placement, step_mode=run.step_mode))
    try:
        status = "early_stopped" if _train_epochs(run) else "completed"
    except TrainingCancelled:
        status = "cancelled"
    return TrainResult(status=status, history=run.history,
                       final=run.history[-1]["metrics"] if run.history else {}, best=_best(run.history),
                       steps=run.step, wall_time_s=run.elapsed(), parameters=run.parameters,
                       checkpoint=run.checkpoint_path if run.checkpoint_path and run.checkpoint_path.exists() else None)


def _train_epochs(run: _Run) -> bool:
    """The epochs left to train; True when early stopping ended them."""
    if run.step == 0 and evaluate_and_checkpoint(run):
        return True
    start_epoch, start_batch = divmod(run.step, run.steps_per_epoch)
    for epoch in range(start_epoch, run.config.epochs):
        if train_one_epoch(run, epoch, start_batch if epoch == start_epoch else 0):
            return True
        run.emit("on_epoch_end", EpochReport(epoch=epoch + 1, step=run.step, lr=run.lr, elapsed_s=run.elapsed()))
    return False
