"""Real training on a slice of the built-in JPEG CIFAR-10 sample, and the CLI run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ml.config import DatasetSpec, TrainConfig, from_dict
from ml.data import load_splits
from ml.models import get_spec
from ml.trainer import train

pytestmark = pytest.mark.slow


def test_task1_on_real_jpeg_subset_beats_chance(jpeg_cifar_subset, tmp_path):
    # 2,000 images give 28 steps an epoch: plain SGD at the study's lr needs ~150 steps to pass 25%.
    config = from_dict(TrainConfig, {**get_spec("task1").defaults, "epochs": 5, "eval_every": 1.0})
    splits = load_splits(DatasetSpec(kind="imagefolder", path=str(jpeg_cifar_subset)), data_dir=tmp_path,
                         seed=0, val_fraction=0.1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1800, 200, 500)
    result = train("task1", config, splits)
    assert result.status == "completed"
    assert [h["epoch"] for h in result.history] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert result.final["val/acc"] > 0.25, result.final  # chance is 0.10


def test_cli_train_writes_summary_and_checkpoint(jpeg_cifar_subset, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "train", "--preset", "task1", "--epochs", "1", "--data",
         str(jpeg_cifar_subset), "--limit-train", "600", "--limit-test", "200", "--device", "cpu", "--out", str(out),
         "--set", "log_every=2"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parameters"] == 390_410 and summary["status"] == "completed"
    assert summary["config"]["lr"] == 0.05 and summary["config"]["epochs"] == 1
    assert set(summary["final"]) >= {"train/acc", "val/loss", "test/acc"} and summary["wall_time_s"] > 0
    assert summary["best"]["metrics"]["val/acc"] >= summary["final"]["val/acc"]
    assert (out / "checkpoint.pt").exists()
    assert json.loads(proc.stdout)["model"] == "task1"
    assert proc.stderr.count("eval epoch") == 3  # one line per evaluation
    assert "step/s" in proc.stderr and "img_s" in proc.stderr  # the progress bar


def test_cli_models_lists_presets_with_counts():
    proc = subprocess.run([sys.executable, "-m", "app.cli", "models"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "390,410" in proc.stdout and "817,834" in proc.stdout and "resnet18" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--preset", "task1", "--lr", "0"], "lr: must be greater than 0"),
    (["--preset", "task1", "--data", "/nonexistent/folder"], "cifar-10-batches-py"),
    (["--preset", "task1", "--set", "milestones=[8,4]"], "milestones: must be a strictly increasing list"),
])
def test_cli_train_bad_input_exits_2_with_message(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "app.cli", "train", *args, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
