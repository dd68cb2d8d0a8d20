"""bench/bf16_conv_exactness.py: its measure on results whose error is known, and the script end to end."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bf16_conv_exactness.py"
_spec = importlib.util.spec_from_file_location("bf16_conv_exactness", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _exact() -> torch.Tensor:
    return torch.randn(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_exactness_of_the_rounded_exact_result_reads_one_without_bias() -> None:
    exact = _exact()
    ratio, bias = bench.exactness(exact.bfloat16(), exact)
    assert ratio == pytest.approx(1.0) and abs(bias) < 1e-4


def test_exactness_of_truncated_results_shows_the_loss_and_a_shrinking_bias() -> None:
    # Rounding toward zero (dropping float32's low 16 bits): twice the error of rounding, all of it shrinking.
    exact = _exact()
    truncated = (exact.float().view(torch.int32) & ~0xFFFF).view(torch.float32)
    ratio, bias = bench.exactness(truncated, exact)
    assert ratio > 1.5 and bias < -0.001


def test_conv_shapes_are_the_models_own() -> None:
    shapes = bench.conv_shapes("net2")
    assert [(s["cin"], s["cout"], s["hw"]) for s in shapes] == [
        (3, 32, 32), (32, 32, 32), (32, 64, 16), (64, 64, 16), (64, 128, 8), (128, 128, 8)]
    assert all(s["k"] == 5 and s["pad"] == 2 for s in shapes)


def test_bf16_conv_exactness_script_compares_each_convolution_end_to_end() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", "task1", "--batch", "4"],
                          capture_output=True, text=True, timeout=300, check=True)
    rows = [line for line in done.stdout.splitlines() if re.match(r"\d+->\d+ k5", line)]
    assert len(rows) == 3 * len(bench.conv_shapes("task1"))
    worst = float(re.search(r"default: worst error / rounding ([\d.]+)", done.stdout).group(1))
    assert 0.9 < worst < 1.5  # oneDNN accumulates bf16 convolutions in fp32 on every CPU
