"""bench/train_throughput.py: the split of a CPU speed-up into convolutions and the rest, and the script end to end."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ml.precision import Precision, choose_precision

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "train_throughput.py"
_spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # its dataclasses look their module up there
_spec.loader.exec_module(bench)

# bf16 runs on any CPU (slowly where it is not native): these tests check the timing's plumbing, not its speed.
BF16_CPU = Precision("bf16", "cpu", channels_last=True, grad_scaler=False, reason="test")


def test_conv_times_times_both_precisions() -> None:
    fp32_ms, bf16_ms = bench.conv_times("task1", BF16_CPU, batch=2, repeats=2)
    assert all(math.isfinite(ms) and ms > 0 for ms in (fp32_ms, bf16_ms))


def test_step_breakdown_subtracts_the_convolutions_from_each_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "conv_times", lambda *args, **kwargs: (100.0, 50.0))
    # 64 images at 400 img/s: a 160 ms step, 60 of them outside the convolutions; at 800 img/s, 80 and 30.
    line = bench.step_breakdown("net2", BF16_CPU, 64, bare=400.0, trainer=800.0)
    assert line == ("net2: a batch's convolutions 100.0 -> 50.0 ms (2.00x), "
                    "the rest of its step 60.0 -> 30.0 ms (2.00x)")


def test_step_breakdown_of_a_rest_lost_in_noise_gives_no_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    # The loops' steps can read shorter than the separately timed convolutions when the machine drifts.
    monkeypatch.setattr(bench, "conv_times", lambda *args, **kwargs: (100.0, 50.0))
    line = bench.step_breakdown("net2", BF16_CPU, 64, bare=400.0, trainer=1600.0)
    assert line.endswith("the rest of its step 60.0 -> -10.0 ms (within noise)")


def test_train_throughput_script_splits_the_speed_up_where_the_cpu_runs_bf16() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--models", "task1", "--images", "128", "--repeats", "1",
                           "--devices", "cpu"], capture_output=True, text=True, timeout=300, check=True)
    assert re.search(r"^task1\s+cpu\s+[\d,]+\s+[\d,]+\s+[\d.]+\s+[\d,]+\s+[\d.]+x$", done.stdout, re.MULTILINE)
    split = re.search(r"^task1: a batch's convolutions [\d.]+ -> [\d.]+ ms \([\d.]+x\)", done.stdout, re.MULTILINE)
    if choose_precision("cpu", True).name == "fp32":
        assert split is None and "no native bf16 here" in done.stdout
    else:
        assert split is not None
