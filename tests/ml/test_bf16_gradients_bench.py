"""bench/bf16_gradients.py: its statistics on gradients whose error is known, and the script end to end."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bf16_gradients.py"
_spec = importlib.util.spec_from_file_location("bf16_gradients", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bf16_gradients"] = bench  # its dataclasses look their module up there
_spec.loader.exec_module(bench)


def _stats(pairs) -> dict[str, float]:
    stats = bench.GradientStats()
    for fp32, bf16 in pairs:
        stats.add([fp32], [bf16])
    return stats.summary()


def _noisy_gradients(batches: int, seed: int = 0) -> list[torch.Tensor]:
    """A mean gradient of norm 1 plus per-batch noise of norm about 3 (1,000 elements)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(1000, generator=g)
    mean /= mean.norm()
    return [mean + torch.randn(1000, generator=g) * 3 / 1000 ** 0.5 for _ in range(batches)]


def test_gradient_stats_equal_gradients_have_no_error() -> None:
    s = _stats((g, g.clone()) for g in _noisy_gradients(8))
    assert s["error/gradient"] == 0 and s["error/noise"] == 0 and s["along"] == 0


def test_gradient_stats_shrunk_gradients_show_a_bias_along_the_mean() -> None:
    s = _stats((g, 0.9 * g) for g in _noisy_gradients(64))
    assert s["along"] == pytest.approx(-0.10, abs=1e-6)
    assert s["mean error/mean gradient"] == pytest.approx(0.10, abs=1e-6)
    # The error is a tenth of each gradient (norm √(1 + 3²)), against noise of norm 3.
    assert s["error/noise"] == pytest.approx(0.1 * 10 ** 0.5 / 3, rel=0.05)
    assert s["bias"] > 2  # the mean error stands out from what 64 noisy errors would give


def test_gradient_stats_independent_error_shows_no_bias() -> None:
    g = torch.Generator().manual_seed(1)
    grads = _noisy_gradients(400)
    s = _stats((x, x + torch.randn(1000, generator=g) * 0.3 / 1000 ** 0.5) for x in grads)
    assert s["error/noise"] == pytest.approx(0.1, rel=0.1)  # error 0.3 against noise 3
    assert 0.8 < s["bias"] < 1.25
    assert abs(s["along"]) < 0.01


def test_bf16_gradients_script_runs_on_the_sample() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--batches", "3", "--batch-size", "8"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "0 Conv2d" in out.stdout and "25 Linear" in out.stdout
    assert "× SGD's minibatch noise" in out.stdout


def test_bf16_gradients_script_refuses_one_batch() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--batches", "1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--batches must be at least 2" in out.stderr
