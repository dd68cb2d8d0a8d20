"""Training steps replayed as one CUDA graph.

At the study's batch of 64, a net2 step on an H200 is bound by the host, not the
GPU: each of its few hundred kernels (forward, backward, the optimizer's update)
is launched from Python, and the GPU waits on the launches (measured on an H200:
the eager trainer at 5.1-5.5 ms a step, the study's fp32 loop at 6.1 ms). A CUDA
graph records the whole step once and replays it with one launch, as
torch.cuda.graphs' "whole network capture" describes.

What has to hold for the replay to be the same step:

- Static inputs. With the data on the GPU the graph draws its own batch: the epoch's
  order and augmentation draws sit in static buffers and a device cursor, moved on by
  the graph, says where the batch starts (`GraphFeed`), so a step launches nothing but
  the replay. With the data in pinned host memory each batch is gathered eagerly and
  copied into tensors the graph reads from; that is also the fallback when a GPU refuses to
  capture the in-graph draw, and only when both captures fail do the steps run eagerly (the
  run's history says which, and why). The last, smaller batch of an epoch (with
  `drop_last` off) runs eagerly on the same parameters and optimizer state.
- The learning rate is a device tensor that the update reads, refilled when the
  schedule changes it: torch.optim.SGD bakes a float lr into the captured kernels,
  so the update here is SGD's own, written with `_foreach` ops (see `SGDUpdate`).
- Autocast's cast cache is off inside the capture (torch.cuda.graphs says so).
- A few eager warm-up steps on a side stream first, so that cuDNN/cuBLAS pick their
  algorithms and SGD creates its momentum buffers before the capture.

SGD only, and no gradient scaler (fp16's `GradScaler.step` reads its inf check on the
host); everything else runs the eager step. A compiled model is captured like any other.
`ml/` is importable without CUDA: this module only touches CUDA when a step is captured.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ml.batching import BatchLoader, EpochPlan
from ml.precision import Precision

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps before the capture (torch.cuda.graphs' recipe uses 3)

StepOutputs = tuple[torch.Tensor, torch.Tensor | None]  # the batch's mean loss, and its correct count when asked


def forward_backward(model: nn.Module, precision: Precision, x: torch.Tensor, y: torch.Tensor, *,
                     count_correct: bool, cache_casts: bool = True,
                     scale: Callable[[torch.Tensor], torch.Tensor] | None = None) -> StepOutputs:
    """Forward at `precision`, loss in fp32, backward (of `scale(loss)` when given: fp16's loss scaling).
    Gradients must be None or zero before."""
    with precision.autocast(cache_enabled=cache_casts):
        out = model(precision.prepare_input(x))
        loss = F.cross_entropy(out.float(), y)
    (scale(loss) if scale is not None else loss).backward()
    correct = (out.detach().argmax(1) == y).sum() if count_correct else None
    return loss.detach(), correct


def why_not_graphed(optimizer: torch.optim.Optimizer, *, device: torch.device, scaler: object | None,
                    enabled: bool) -> str | None:
    """Why training steps cannot be replayed as a CUDA graph here, or None when they can.

    A compiled model (`compile`) is captured too: torch.compile's default mode makes no CUDA
    graphs of its own, and the warm-up steps compile it before the capture, so the graph
    replays inductor's fused kernels."""
    if not enabled:
        return "cuda_graphs is off"
    if device.type != "cuda":
        return f"CUDA graphs need a GPU (the device is {device.type})"
    if scaler is not None:
        return "fp16's gradient scaler reads its inf check on the host every step"
    if type(optimizer) is not torch.optim.SGD:
        return f"the graphed update is SGD's ({type(optimizer).__name__} is not)"
    if len(optimizer.param_groups) != 1:
        return "the graphed update takes one parameter group"
    group = optimizer.param_groups[0]
    if group.get("maximize") or group.get("dampening", 0) != 0:
        return "the graphed update takes SGD without maximize or dampening"
    return None


class SGDUpdate:
    """torch.optim.SGD's update (momentum, Nesterov, weight decay), reading the learning rate from a
    device tensor so that a captured graph follows the schedule. It updates the optimizer's own
    parameters and momentum buffers in place, so the optimizer's state_dict stays the truth."""

    def __init__(self, optimizer: torch.optim.SGD, device: torch.device):
        group = optimizer.param_groups[0]
        self.params: list[torch.Tensor] = list(group["params"])
        self.momentum, self.nesterov, self.weight_decay = group["momentum"], group["nesterov"], group["weight_decay"]
        self.optimizer = optimizer
        self.lr = torch.tensor(float(group["lr"]), device=device)
        self._lr_value = float(group["lr"])

    def sync_lr(self) -> None:
        """Refill the device lr from the schedule's value when it changed (a kernel launch, no host sync)."""
        # param_groups[0] each time: load_state_dict (a resume) replaces the group dicts.
        lr = float(self.optimizer.param_groups[0]["lr"])
        if lr != self._lr_value:
            self._lr_value = lr
            self.lr.fill_(lr)

    def existing_buffers(self) -> list[torch.Tensor] | None:
        """The optimizer's momentum buffers, or None before its first step has made them."""
        buffers = [self.optimizer.state[p].get("momentum_buffer") for p in self.params]
        return None if any(b is None for b in buffers) else buffers

    @torch.no_grad()
    def __call__(self, buffers: list[torch.Tensor] | None = None) -> None:
        """One step, torch.optim.SGD's arithmetic; `buffers` are the momentum buffers (looked up when left out)."""
        grads = [p.grad for p in self.params]
        if self.weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
        if self.momentum:
            buffers = buffers if buffers is not None else self.existing_buffers()
            if buffers is None:  # the first step, as SGD takes it: each buffer starts as the gradient
                buffers = [g.detach().clone() for g in grads]
                for p, buffer in zip(self.params, buffers):
                    self.optimizer.state[p]["momentum_buffer"] = buffer
            else:
                torch._foreach_mul_(buffers, self.momentum)
                torch._foreach_add_(buffers, grads)
            grads = torch._foreach_add(grads, buffers, alpha=self.momentum) if self.nesterov else buffers
        torch._foreach_sub_(self.params, torch._foreach_mul(grads, self.lr))


class GraphFeed:
    """The training batches drawn inside the CUDA graph, when the data sits on the GPU.

    The epoch's order and augmentation draws are copied into static buffers once per epoch,
    and a device cursor says where the next batch starts; the graph gathers, normalises and
    augments its batch with `BatchLoader.batch` (the eager steps' code, so the same batch)
    and moves the cursor on itself. A replay then needs nothing from the host: no gather,
    normalisation or input copies launched from Python per step.
    """

    def __init__(self, loader: BatchLoader):
        self.loader = loader
        n, device = loader.num_images, loader.device
        self.order = torch.zeros(n, dtype=torch.long, device=device)
        self.draws = None
        if loader.augment:
            self.draws = (torch.zeros(n, dtype=torch.long, device=device),
                          torch.zeros(n, dtype=torch.long, device=device),
                          torch.zeros(n, dtype=torch.bool, device=device))
        self.cursor = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = torch.arange(loader.batch_size, device=device)
        self._loaded: EpochPlan | None = None
        self._next_batch: int | None = None  # the batch the cursor points at, as the host knows it

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch at the cursor, which then moves on: this is what the graph captures."""
        # Wrapped into range: a replay past the epoch's end (a benchmark replaying the
        # graph on its own) reads the epoch again instead of out of bounds.
        positions = (self.cursor + self.offsets).remainder_(len(self.order))
        x, y = self.loader.batch(EpochPlan(self.order, self.order, self.draws), positions)
        self.cursor.add_(self.loader.batch_size)
        return x, y

    def point_at(self, plan: EpochPlan, batch: int) -> None:
        """Make the next replay train batch `batch` of `plan`: kernel launches only when the
        epoch changed or an eager step came between (no host sync either way)."""
        if plan is not self._loaded:
            self.order.copy_(plan.order, non_blocking=True)
            if self.draws is not None:
                for static, drawn in zip(self.draws, plan.draws):
                    static.copy_(drawn, non_blocking=True)
            self._loaded = plan
        if batch != self._next_batch:
            self.cursor.fill_(batch * self.loader.batch_size)
        self._next_batch = batch + 1


class GraphedStep:
    """The training step (forward, backward, SGD update) captured once as a CUDA graph, then replayed.

    Call it with the epoch's plan and a batch index; it returns the batch's loss (and correct
    count when asked) as tensors on the device, valid until the next call, and adds them into
    the caller's sums with `accumulate` (captured with the step, so a replay launches nothing
    more). With the data on the GPU the graph draws the batch itself (`GraphFeed`); with the data
    in pinned host memory each batch is gathered eagerly and copied into the graph's input
    tensors. The first WARMUP_STEPS calls warm up; any batch of another size runs `eager_step`.
    When the capture fails, it says why in `failed` and to `notify`, and every later step runs
    eagerly: the training goes on either way.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.SGD, precision: Precision, device: torch.device,
                 *, loader: BatchLoader, count_correct: bool,
                 eager_step: Callable[[torch.Tensor, torch.Tensor], StepOutputs],
                 accumulate: Callable[[torch.Tensor, torch.Tensor | None, int], None] = lambda *outputs: None,
                 notify: Callable[[str], None] = lambda message: None, gather_in_graph: bool = True):
        self.model, self.optimizer, self.precision, self.device = model, optimizer, precision, device
        self.loader, self.count_correct, self.notify = loader, count_correct, notify
        self._eager_step, self.accumulate = eager_step, accumulate
        self.update = SGDUpdate(optimizer, device)
        # Pinned host images are gathered on the host, which a graph cannot replay.
        on_device = loader.images.device == loader.device
        self.feed = GraphFeed(loader) if gather_in_graph and on_device else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None  # why no graph could be captured: every step runs eagerly
        self.feed_failed: str | None = None  # why the batch could not be drawn inside the graph
        self.warmed_up = 0
        self._side_stream: torch.cuda.Stream | None = None

    def eager_step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutputs:
        outputs = self._eager_step(x, y)
        self.accumulate(*outputs, len(y))
        return outputs

    def __call__(self, plan: EpochPlan, batch: int) -> StepOutputs:
        window = self.loader.batch_window(batch)
        if self.failed is not None or window.stop - window.start != self.loader.batch_size:
            return self.eager_step(*self.loader.batch(plan, window))  # the graph is made for full batches
        if self.graph is None:
            if self.warmed_up < WARMUP_STEPS:
                return self._warm_up(*self.loader.batch(plan, window))
            self._capture(plan, window)
            if self.graph is None:
                return self.eager_step(*self.loader.batch(plan, window))
        if self.feed is not None:
            self.feed.point_at(plan, batch)
        else:
            x, y = self.loader.batch(plan, window)
            self.static_x.copy_(x, non_blocking=True)
            self.static_y.copy_(y, non_blocking=True)
        self.update.sync_lr()
        self.graph.replay()
        return self.static_loss, self.static_correct

    def _warm_up(self, x: torch.Tensor, y: torch.Tensor) -> StepOutputs:
        """The step the graph will hold, run eagerly on a side stream, as torch.cuda.graphs asks before a
        capture: the same forward and backward with the same autocast settings, so cuDNN and cuBLAS pick
        their algorithms, SGD makes its momentum buffers, and a compiled model is compiled for exactly
        what the capture runs (a recompile inside the capture would fail it: dynamo guards on the
        autocast cache flag)."""
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        side = self._side_stream
        # Waiting on the main stream first also keeps the side stream from reusing memory that the
        # main stream still reads (the previous warm-up's loss, added into the report).
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            outputs = forward_backward(self.model, self.precision, x, y, count_correct=self.count_correct,
                                       cache_casts=False)
            self.optimizer.step()  # torch's own step: it makes the momentum buffers, and the lr scheduler sees it
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.accumulate(*outputs, len(y))  # on the main stream, as the replays' adds
        self.warmed_up += 1
        return outputs

    def _capture(self, plan: EpochPlan, window: slice) -> None:
        """Record the step; when drawing the batch inside the graph fails, record it again with the batch
        copied in (the path that works with pinned data), and only when that fails too go eager."""
        while self.graph is None:
            try:
                self._record(plan, window)
            except Exception as err:  # noqa: BLE001 - the eager step is always there to fall back on
                reason = f"{type(err).__name__}: {err}"
                self.optimizer.zero_grad(set_to_none=True)
                if self.feed is None:
                    self.failed = reason
                    log.warning("capturing the training step as a CUDA graph failed (%s): eager steps from here on",
                                reason)
                    break
                log.warning("capturing the training step with its batch drawn inside the CUDA graph failed (%s): "
                            "capturing it with batches copied in", reason)
                self.feed, self.feed_failed = None, reason
        if self.failed is not None or self.feed_failed is not None:
            self.notify(self.describe())  # the run's history says its steps are not what was asked for

    def _record(self, plan: EpochPlan, window: slice) -> None:
        if self.feed is None:
            self.static_x, self.static_y = (t.clone() for t in self.loader.batch(plan, window))
        buffers = self.update.existing_buffers() if self.update.momentum else None
        if self.update.momentum and buffers is None:
            raise RuntimeError("SGD made no momentum buffers in the warm-up steps")
        self.optimizer.zero_grad(set_to_none=True)  # the capture allocates the gradients in its pool
        graph = torch.cuda.CUDAGraph()
        # thread_local: the worker's system-metrics thread may query the GPU during the capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            x, y = self.feed.next_batch() if self.feed is not None else (self.static_x, self.static_y)
            self.static_loss, self.static_correct = forward_backward(
                self.model, self.precision, x, y, count_correct=self.count_correct, cache_casts=False)
            missing = [i for i, p in enumerate(self.update.params) if p.grad is None]
            if missing:
                raise RuntimeError(f"parameters {missing[:5]} got no gradient")
            self.update(buffers)
            self.accumulate(self.static_loss, self.static_correct, len(y))
        self.graph = graph

    def describe(self) -> str:
        if self.failed is not None:
            return f"training steps: eager (the CUDA graph capture failed: {self.failed})"
        if self.feed is not None:
            batches = "drawn inside the graph"
        elif self.feed_failed is not None:
            batches = f"copied in (drawing them inside the graph failed: {self.feed_failed})"
        else:
            batches = "gathered from pinned host memory and copied in"
        return (f"training steps: one CUDA graph replay each, batches {batches}, captured after "
                f"{WARMUP_STEPS} eager warm-up steps (cuda_graphs: true)")
