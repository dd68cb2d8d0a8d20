"""The device check: proves the trainer on a GPU and times net2 against the study's own loop.

Runs on a machine whose Python has only torch (>= 2.11) and torchvision (>= 0.26):
no pytest, no FastAPI, no Celery. Everything it needs from this project is `ml/`.

    python bench/gpu_check.py DATA            # DATA: cifar10-jpeg.tar.gz or its extracted folder
    python bench/gpu_check.py DATA --epochs 2 --skip-study

1. Checks (the CUDA-marked tests, as plain functions, so no pytest is needed):
   a training step, checkpoint save and resume, evaluation, at each precision
   the device offers (bf16 and fp16 on CUDA; fp32 and, where native, bf16 on CPU); on CUDA
   also training from pinned host memory (the fallback for data larger than the GPU's memory).
2. net2 on the full training set, with the study's protocol, for `--epochs` (10):
   (a) the study's loop: ImageFolder, per-image transforms, DataLoader, fp32;
   (b) the trainer, full protocol (evaluations on train/val/test every half epoch);
   (c) the trainer, running protocol.
   It prints images/s, training seconds, evaluation seconds, final val/test accuracy,
   and the ratios (b)/(a) and (c)/(a) of training throughput.
   With --eager-too, on CUDA: (e) (c) with its steps launched op by op (`cuda_graphs: false`),
   and (g) (c) with each batch gathered outside the graph and copied in.
   With --compile, last of all: (d) the running protocol with `compile: true` (still replayed
   as a CUDA graph on a GPU), cold and warm.
3. worker.tasks.train_run end to end (SQLite, filesystem broker, a temporary DATA_DIR).
   The GPU machine's Python lacks Celery, SQLModel and pydantic, so `make gpu-deps`
   downloads them here as binary wheels for CPython 3.12 into .gpu-deps/ (about 11 MB),
   and the script installs them into a temporary folder there. Without them the step is
   skipped and says which module is missing.

On the device machine, prepared here with
`make gpu-deps && mkdir -p .gpu-data && cp ../shared/datasets/cifar10-jpeg.tar.gz .gpu-data/`
and run with carry [".gpu-deps", ".gpu-data"] (both ignored by git):

    PYTHONUNBUFFERED=1 python3 bench/gpu_check.py .gpu-data/cifar10-jpeg.tar.gz 2>&1 | tee $OUT/gpu_check.log

Without CUDA it says so and times the CPU with a smaller default workload
(1 epoch, 5,000 training and 1,000 test images), so that it still ends in minutes.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml.batching import BatchLoader  # noqa: E402
from ml.config import DatasetSpec, TrainConfig, from_dict  # noqa: E402
from ml.models import build_model, get_spec  # noqa: E402
from ml.precision import Precision, choose_precision  # noqa: E402
from ml.trainer import evaluate, load_checkpoint, train  # noqa: E402


# ------------------------------------------------------------------ checks ---

@dataclass
class _Set:
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class _Splits:
    train: _Set
    val: _Set
    test: _Set


def tiny_splits(seed: int = 0) -> _Splits:
    """Random uint8 images whose class is readable from the mean colour (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)

    def part(n: int) -> _Set:
        labels = torch.randint(0, 10, (n,), generator=g)
        images = torch.randint(0, 64, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        images += (labels * 19).to(torch.uint8).view(n, 1, 1, 1)
        return _Set(images, labels)
    return _Splits(part(256), part(64), part(64))


def precisions_of(device: torch.device) -> list[Precision]:
    """Every precision worth proving on `device`: fp32, and each mixed precision it can run."""
    found = [choose_precision(device, False)]
    if device.type == "cuda":
        found.append(choose_precision(device, True, cuda_bf16=False))  # fp16 + scaler runs on every GPU
        if torch.cuda.is_bf16_supported():
            found.append(choose_precision(device, True, cuda_bf16=True))
    else:
        chosen = choose_precision(device, True)
        if chosen.name != "fp32":
            found.append(chosen)
    return found


def _train_tiny(device: torch.device, precision: Precision, checkpoint: Path | None = None,
                resume_from: Path | None = None, epochs: int = 1, **overrides: Any):
    """The trainer on tiny data at `precision` (by stubbing the choice, so each precision runs anywhere)."""
    import ml.trainer as trainer

    config = from_dict(TrainConfig, {**get_spec("task1").defaults, "epochs": epochs, "log_every": 2,
                                     "eval_every": 0.5, "early_stop_count": 0, "batch_size": 32,
                                     "amp": precision.name != "fp32", **overrides})
    original = trainer.choose_precision
    trainer.choose_precision = lambda dev, amp: precision
    try:
        return train("task1", config, tiny_splits(), device=device, checkpoint_path=checkpoint,
                     resume_from=resume_from)
    finally:
        trainer.choose_precision = original


def check_training_step(device: torch.device, precision: Precision) -> str:
    """One epoch of steps: the loss is finite and falls, the weights stay fp32 (autocast, not a cast)."""
    result = _train_tiny(device, precision)
    first, last = result.history[0]["metrics"], result.history[-1]["metrics"]
    assert result.status == "completed", result.status
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values()), last
    assert last["val/loss"] < first["val/loss"], (first["val/loss"], last["val/loss"])
    return f"val loss {first['val/loss']:.3f} -> {last['val/loss']:.3f}"


def check_checkpoint_resume(device: torch.device, precision: Precision) -> str:
    """Train 2 epochs straight, and 1 + resume 1 from the checkpoint: the same final metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        straight = _train_tiny(device, precision, epochs=2)
        path = Path(tmp) / "checkpoint.pt"
        _train_tiny(device, precision, checkpoint=path, epochs=1)
        state = load_checkpoint(path, map_location="cpu")
        assert all(t.device.type == "cpu" for t in state["model"].values())
        assert all(t.dtype in (torch.float32, torch.int64) for t in state["model"].values())
        resumed = _train_tiny(device, precision, checkpoint=path, resume_from=path, epochs=2)
    a, b = straight.final["val/loss"], resumed.final["val/loss"]
    # Deterministic on CPU; on CUDA, kernels may pick other algorithms between runs.
    tolerance = 1e-4 if device.type == "cpu" else 0.05
    assert abs(a - b) <= tolerance * max(1.0, abs(a)), (a, b)
    return f"val loss straight {a:.4f}, resumed {b:.4f}"


def check_evaluation(device: torch.device, precision: Precision) -> str:
    """Evaluation at `precision` agrees with fp32, and accumulates in fp32."""
    torch.manual_seed(0)
    model = precision.prepare_model(build_model("net2").to(device))
    data = tiny_splits().val
    loader = BatchLoader(data.images.to(device), data.labels, 16, shuffle=False, device=device)
    ours = evaluate(model, loader, precision=precision)
    reference = evaluate(model, loader)
    assert abs(ours["loss"] - reference["loss"]) <= 0.05 * reference["loss"], (ours, reference)
    return f"loss {ours['loss']:.4f} vs fp32 {reference['loss']:.4f}"


CHECKS: list[Callable[[torch.device, Precision], str]] = [check_training_step, check_checkpoint_resume,
                                                          check_evaluation]


def check_pinned_host_fallback(device: torch.device, precision: Precision) -> str:
    """Data "too large" for the GPU (free memory stubbed to zero) trains from pinned host memory."""
    import ml.trainer as trainer

    real, chosen = trainer.data_placement, []

    def no_free_memory(data_bytes: int, dev: torch.device, free_bytes: int | None = None) -> tuple[str, str]:
        chosen.append(real(data_bytes, dev, free_bytes=0))
        return chosen[-1]

    trainer.data_placement = no_free_memory
    try:
        result = _train_tiny(device, precision)
    finally:
        trainer.data_placement = real
    first, last = result.history[0]["metrics"], result.history[-1]["metrics"]
    assert result.status == "completed", result.status
    assert chosen and chosen[-1][0] == "pinned", chosen
    assert last["val/loss"] < first["val/loss"], (first["val/loss"], last["val/loss"])
    return f"pinned host memory; val loss {first['val/loss']:.3f} -> {last['val/loss']:.3f}"


@contextmanager
def recording_graphed_steps(**overrides: Any) -> Iterator[list[Any]]:
    """The GraphedSteps the trainer makes inside the block, so that a caller can look at their graphs;
    `overrides` replace their keyword arguments (gather_in_graph=False for the A/B of the batch draw)."""
    import ml.trainer as trainer

    made: list[Any] = []

    class Recorded(trainer.GraphedStep):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, **overrides})
            made.append(self)

    original = trainer.GraphedStep
    trainer.GraphedStep = Recorded
    try:
        yield made
    finally:
        trainer.GraphedStep = original


def check_graphed_step(device: torch.device, precision: Precision) -> str:
    """The step replayed as a CUDA graph: captured (not fallen back), and it trains as the eager step does."""
    with recording_graphed_steps() as made:
        graphed = _train_tiny(device, precision, epochs=2, protocol="running", momentum=0.9)
    eager = _train_tiny(device, precision, epochs=2, protocol="running", momentum=0.9, cuda_graphs=False)
    assert made, "no GraphedStep was made"
    assert made[0].failed is None, made[0].failed
    assert made[0].graph is not None, "never captured"
    assert made[0].feed is not None, f"the batches were not drawn inside the graph ({made[0].feed_failed})"
    first, a, b = graphed.history[0]["metrics"]["val/loss"], graphed.final["val/loss"], eager.final["val/loss"]
    assert a < first, ("the replayed steps did not train", first, a)
    # Not bit for bit: the graph's dropout masks and the update's rounding differ from the eager step's.
    assert abs(a - b) <= 0.15 * max(1.0, abs(b)), (a, b)
    return f"val loss {first:.4f} -> graphed {a:.4f}, eager {b:.4f}"


def run_checks(device: torch.device) -> bool:
    ok = True
    precisions = precisions_of(device)
    # Pinned host memory needs CUDA; one precision (the one the trainer picks) proves the copy path.
    planned = [(check, p) for p in precisions for check in CHECKS]
    if device.type == "cuda":
        planned.append((check_pinned_host_fallback, choose_precision(device, True)))
        # fp16 steps stay eager (the scaler syncs); fp32 and bf16 replay a graph.
        planned += [(check_graphed_step, p) for p in precisions if not p.grad_scaler]
    for check, precision in planned:
        began = time.perf_counter()
        try:
            detail = check(device, precision)
            print(f"  PASS {check.__name__:<26} {precision.name:<5} {detail} ({time.perf_counter() - began:.1f} s)")
        except Exception as err:
            ok = False
            print(f"  FAIL {check.__name__:<26} {precision.name:<5} {type(err).__name__}: {err}")
            traceback.print_exc(limit=3)
    return ok


# ------------------------------------------------------------------ timing ---

def dataset_root(data: Path) -> Path:
    """The extracted image folder (train/ and test/): `data` itself, or the archive extracted to a temp dir."""
    if data.is_dir():
        candidates = [data, *[p for p in data.iterdir() if p.is_dir()]]
        for candidate in candidates:
            if (candidate / "train").is_dir() and (candidate / "test").is_dir():
                return candidate
        raise SystemExit(f"{data}: no train/ and test/ folders inside")
    target = Path(tempfile.mkdtemp(prefix="gpu-check-data-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)  # 236 MB of small files: not left behind
    began = time.perf_counter()
    with tarfile.open(data) as archive:
        archive.extractall(target, filter="data")
    print(f"extracted {data.name} in {time.perf_counter() - began:.1f} s")
    return dataset_root(target)


def study_loop(root: Path, device: torch.device, epochs: int, limit: int | None, limit_test: int | None,
               seed: int = 0) -> dict[str, float]:
    """(a) The study's loop: ImageFolder, per-image ToTensor + Normalize, DataLoader, fp32, batch 64."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from ml.batching import CIFAR_MEAN, CIFAR_STD

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    full = datasets.ImageFolder(root / "train", transform=tf)
    test = datasets.ImageFolder(root / "test", transform=tf)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(full), generator=g).tolist()
    if limit:
        order = order[:limit]
    n_val = round(len(order) * 0.1)
    train_set, val_set = Subset(full, order[n_val:]), Subset(full, order[:n_val])
    if limit_test:  # the same seeded subset as ml.data draws (TEST_SUBSET_SEED 0)
        test = Subset(test, torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:limit_test]
                      .sort().values.tolist())
    workers = min(8, max(1, (torch.get_num_threads() or 2) - 1))
    pin = device.type == "cuda"
    loader = DataLoader(train_set, batch_size=64, shuffle=True, num_workers=workers, pin_memory=pin,
                        drop_last=True, persistent_workers=True, generator=g)
    spec = get_spec("net2").defaults
    torch.manual_seed(seed)
    model = build_model("net2").to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=spec["momentum"])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=spec["milestones"], gamma=spec["gamma"])
    images, began = 0, time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images += len(y)
        scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - began
    began = time.perf_counter()
    accs = {}
    for name, subset in (("val", val_set), ("test", test)):
        correct = total = 0
        model.eval()
        with torch.no_grad():
            for x, y in DataLoader(subset, batch_size=512, num_workers=workers):
                correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
                total += len(y)
        accs[name] = correct / max(total, 1)
    return {"images_per_s": images / train_s, "train_s": train_s, "eval_s": time.perf_counter() - began,
            "val_acc": accs["val"], "test_acc": accs["test"]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_loop(splits: Any, device: torch.device, epochs: int, protocol: str,
                 compile: bool = False, cuda_graphs: bool = True, gather_in_graph: bool = True) -> dict[str, float]:
    """(b)/(c)/(d) The trainer with the study's net2 recipe and `protocol`; evaluations timed apart."""
    import ml.trainer as trainer

    config = from_dict(TrainConfig, {**get_spec("net2").defaults, "epochs": epochs, "protocol": protocol,
                                     "early_stop_count": 0, "compile": compile,
                                     "cuda_graphs": cuda_graphs})
    evaluate_all, eval_s = trainer._evaluate_all, [0.0]

    def timed_evaluation(run: Any) -> dict[str, float]:
        _sync(device)  # the steps queued before it are training time
        began = time.perf_counter()
        try:
            return evaluate_all(run)
        finally:
            _sync(device)
            eval_s[0] += time.perf_counter() - began

    trainer._evaluate_all = timed_evaluation
    try:
        with recording_graphed_steps(gather_in_graph=gather_in_graph) as made:
            _sync(device)
            began = time.perf_counter()
            result = train("net2", config, splits, device=device)
            _sync(device)
            wall = time.perf_counter() - began
    finally:
        trainer._evaluate_all = evaluate_all
    train_s = wall - eval_s[0]
    images = result.steps * config.batch_size
    row = {"images_per_s": images / train_s, "train_s": train_s, "eval_s": eval_s[0],
           "step_ms": 1000 * train_s / max(result.steps, 1),
           "val_acc": result.final.get("val/acc", float("nan")), "test_acc": result.final.get("test/acc", float("nan"))}
    if made and made[0].graph is not None:
        row["replay_ms"] = replay_ms(made[0].graph)
        if made[0].feed_failed is not None:
            print(f"    the batches were copied into the graph: drawing them inside it failed "
                  f"({made[0].feed_failed})", flush=True)
    elif made and made[0].failed is not None:
        print(f"    the CUDA graph capture failed, so these steps ran eagerly: {made[0].failed}", flush=True)
    return row


def replay_ms(graph: Any, replays: int = 200) -> float:
    """The GPU time of one replay of the captured step, back to back with no host work between:
    what a step costs the GPU, against the whole step's time (the batch, the copies, the bookkeeping).
    It trains the finished model on its last batch a few hundred more times; the figures are already taken."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def run_timing(root: Path, device: torch.device, epochs: int, limit: int | None, limit_test: int | None,
               skip_study: bool, eager_too: bool = False,
               benchmark_too: bool = False) -> tuple[Any, dict[str, dict[str, float]]]:
    from ml.data import load_splits

    began = time.perf_counter()
    splits = load_splits(DatasetSpec(kind="imagefolder", path=str(root), limit_train=limit, limit_test=limit_test),
                         data_dir=root.parent,
                         seed=0, val_fraction=0.1)
    print(f"data: {splits.source}, decoded in {time.perf_counter() - began:.1f} s")
    print(f"net2, {epochs} epoch(s), precision {choose_precision(device, True).describe()}")
    rows = {}
    if not skip_study:
        rows["(a) study loop, fp32"] = study_loop(root, device, epochs, limit, limit_test)
        print_row("(a) study loop, fp32", rows["(a) study loop, fp32"])
    for key, protocol in (("(b) trainer, full", "full"), ("(c) trainer, running", "running")):
        rows[key] = trainer_loop(splits, device, epochs, protocol)
        print_row(key, rows[key])
    if "(a) study loop, fp32" in rows:
        base = rows["(a) study loop, fp32"]["images_per_s"]
        print(f"ratio (b)/(a) {rows['(b) trainer, full']['images_per_s'] / base:.2f}x, "
              f"(c)/(a) {rows['(c) trainer, running']['images_per_s'] / base:.2f}x (training images/s)")
    if eager_too and device.type == "cuda":
        key = "(e) (c) with eager steps"
        rows[key] = trainer_loop(splits, device, epochs, "running", cuda_graphs=False)
        print_row(key, rows[key])
        print(f"    CUDA graphs: {rows[key]['train_s'] / rows['(c) trainer, running']['train_s']:.2f}x less "
              f"training time than eager steps", flush=True)
        key = "(g) (c), batches copied in"  # the batch gathered eagerly and copied into the graph's inputs
        rows[key] = trainer_loop(splits, device, epochs, "running", gather_in_graph=False)
        print_row(key, rows[key])
        gain = rows[key]["train_s"] / rows["(c) trainer, running"]["train_s"]
        print(f"    batches drawn inside the graph: {gain:.2f}x less training time than copied in", flush=True)
    if benchmark_too and device.type == "cuda":  # does cuDNN's autotuning pay for these small convolutions?
        key = "(f) (c) with cudnn.benchmark"
        torch.backends.cudnn.benchmark = True
        try:
            rows[key] = trainer_loop(splits, device, epochs, "running")
        finally:
            torch.backends.cudnn.benchmark = False
        print_row(key, rows[key])
    return splits, rows


def run_compile_timing(splits: Any, device: torch.device, epochs: int, uncompiled: dict[str, float]) -> None:
    """(d) The running protocol with `compile: true`, twice: cold (compiling counts as training time),
    then with inductor's caches warm (a new model still re-traces, but reuses compiled kernels)."""
    for key in ("(d) compiled, cold", "(d) compiled, warm"):
        row = trainer_loop(splits, device, epochs, "running", compile=True)
        print_row(key, row)
        print(f"    {row['train_s'] - uncompiled['train_s']:+.1f} s of training time against (c) "
              f"({row['images_per_s'] / uncompiled['images_per_s']:.2f}x images/s)", flush=True)


def print_row(name: str, r: dict[str, float]) -> None:
    print(f"  {name:<24} {r['images_per_s']:>9,.0f} img/s  train {r['train_s']:7.1f} s  eval {r['eval_s']:6.1f} s  "
          f"val {100 * r['val_acc']:5.2f}%  test {100 * r['test_acc']:5.2f}%", flush=True)
    if "replay_ms" in r:
        print(f"    a step: {r['step_ms']:.3f} ms in training; the graph's replay alone {r['replay_ms']:.3f} ms "
              f"of GPU time", flush=True)


# -------------------------------------------------------------- end to end ---

WORKER_MODULES = ("celery", "sqlmodel", "pydantic_settings", "alembic", "psutil")
DEPS_WHEELS = REPO / ".gpu-deps"  # `make gpu-deps` fills it with wheels for the GPU machine's Python


def missing_module(modules: tuple[str, ...]) -> str | None:
    """Why the first of `modules` that does not import fails, or None when all import."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            return str(err)
    return None


def import_or_install(modules: tuple[str, ...], wheels: Path) -> str | None:
    """Import `modules`; if one is missing, install the wheels in `wheels` into a temporary folder and retry.

    The GPU machine has torch but not the web stack, and no network: the worker's other
    dependencies travel as binary wheels and go into a folder that lives as long as this
    process. Returns None when everything imports, else what is still missing.
    """
    missing = missing_module(modules)
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if missing is None or not found:
        return missing
    target = Path(tempfile.mkdtemp(prefix="gpu-check-deps-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
         "--disable-pip-version-check", "--target", str(target), *map(str, found)],
        capture_output=True, text=True, timeout=300)
    if installed.returncode != 0:
        return f"installing {wheels.name}/ failed: {installed.stderr.strip()[-400:]}"
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return missing_module(modules)


def run_worker_end_to_end(root: Path, limit_train: int) -> bool:
    """worker.tasks.train_run in this process, with SQLite and the filesystem broker in a temporary DATA_DIR.

    The worker's dependencies come from site-packages or, on the GPU machine, from the
    wheels in .gpu-deps/; without either the step is skipped and says so.
    """
    import os

    missing = import_or_install(WORKER_MODULES, DEPS_WHEELS)
    if missing:
        print(f"end to end: skipped, the worker's dependencies are not here ({missing}). "
              f"Run `make gpu-deps` where pip reaches PyPI and carry .gpu-deps/ with the script.")
        return True
    data_dir = Path(tempfile.mkdtemp(prefix="gpu-check-run-"))
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    for name in ("DATABASE_URL", "BROKER_URL", "ARTIFACTS_DIR", "DATASETS_DIR", "TRAINBOARD_API_TOKEN"):
        os.environ.pop(name, None)
    # The data lies wherever the operator put it: allow exactly that folder as a dataset root.
    os.environ.update(DATA_DIR=str(data_dir), TRAINBOARD_ENV_FILE="", DATASET_ROOTS=str(root.resolve()))
    from sqlmodel import Session, func, select

    from app.core.config import get_settings
    from app.core.db import get_engine, init_db
    from app.models import MetricPoint, Run, RunCreate
    from app.services.runs import create_runs
    from worker.tasks import train_run

    get_settings.cache_clear()
    get_engine.cache_clear()
    get_settings().ensure_dirs()
    init_db()
    run_in = RunCreate.model_validate({
        "model": "net2", "dataset": {"kind": "imagefolder", "path": str(root), "limit_train": limit_train},
        "hyperparameters": {"epochs": 1, "early_stop_count": 0, "log_every": 5}})
    with Session(get_engine()) as session:
        run_id = create_runs(session=session, runs_in=[run_in])[0].id
    began = time.perf_counter()
    status = train_run(run_id)
    with Session(get_engine()) as session:
        run = session.get(Run, run_id)
        system = session.scalar(select(func.count()).select_from(MetricPoint).where(
            MetricPoint.run_id == run_id, MetricPoint.name.like("system/%")))
        print(f"end to end: train_run {status} in {time.perf_counter() - began:.0f} s; precision {run.precision}; "
              f"device {run.device_info.get('name')}, torch {run.device_info.get('torch')}, "
              f"CUDA {run.device_info.get('cuda')}, driver {run.device_info.get('driver')}; "
              f"{system} system points; final {run.final_metrics}")
    get_engine().dispose()
    return status == "succeeded" and system > 0


# -------------------------------------------------------------------- main ---

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="cifar10-jpeg.tar.gz or the folder it extracts to")
    parser.add_argument("--epochs", type=int, default=None, help="default: 10 on CUDA, 1 on CPU")
    parser.add_argument("--limit-train", type=int, default=None, help="default: all on CUDA, 5000 on CPU")
    parser.add_argument("--limit-test", type=int, default=None, help="default: all on CUDA, 1000 on CPU")
    parser.add_argument("--skip-study", action="store_true", help="leave out (a), the study's DataLoader loop")
    parser.add_argument("--compile", action="store_true",
                        help="also time (d): the running protocol with compile: true (a CUDA graph of the "
                             "compiled step on a GPU), cold and warm, after the rest")
    parser.add_argument("--eager-too", action="store_true",
                        help="on CUDA, also time (e): (c) with cuda_graphs off, the steps launched op by op, "
                             "and (g): (c) with each batch gathered outside the graph and copied in")
    parser.add_argument("--benchmark-too", action="store_true",
                        help="on CUDA, also time (f): (c) with torch.backends.cudnn.benchmark on")
    parser.add_argument("--skip-end-to-end", action="store_true", help="leave out the worker.tasks.train_run step")
    parser.add_argument("--checks-only", action="store_true")
    parser.add_argument("--end-to-end-only", action="store_true", help="only the worker.tasks.train_run step")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.get_num_threads()} CPU threads")
    if cuda:
        print(f"device: {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}")
    else:
        print("CUDA is absent: checking and timing the CPU only (the GPU figures are still to be measured)")
    began = time.perf_counter()
    print("checks:")
    ok = True if args.end_to_end_only else run_checks(device)
    if not args.checks_only:
        epochs = args.epochs or (10 if cuda else 1)
        limit = args.limit_train if args.limit_train is not None else (None if cuda else 5000)
        limit_test = args.limit_test if args.limit_test is not None else (None if cuda else 1000)
        root = dataset_root(args.data)
        timed = None
        if not args.end_to_end_only:
            timed = run_timing(root, device, epochs, limit, limit_test, args.skip_study, args.eager_too,
                               args.benchmark_too)
        try:
            if not args.skip_end_to_end:
                ok = run_worker_end_to_end(root, limit or 5000) and ok
        except Exception:  # noqa: BLE001 - the device session's log must show the failure, then the verdict
            print("end to end: FAILED")
            traceback.print_exc()
            ok = False
        if args.compile and timed:  # last: compiling is the slowest and least certain step
            splits, rows = timed
            run_compile_timing(splits, device, epochs, rows["(c) trainer, running"])
    print(f"done in {time.perf_counter() - began:.0f} s; checks {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
