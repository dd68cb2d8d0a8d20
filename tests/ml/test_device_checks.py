"""bench/gpu_check.py's checks (a training step, checkpoint save and resume, evaluation) at every precision.

The same functions run on the GPU machine without pytest; here they run on the CPU
(fp32, and bf16 forced: autocast works on any CPU, natively fast or not) and, where
CUDA is present, on the GPU (the `cuda` marker).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from ml.precision import Precision, choose_precision

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # its dataclasses look their module up there
_spec.loader.exec_module(gpu_check)

CPU_PRECISIONS = [choose_precision("cpu", False), choose_precision("cpu", True, cpu_bf16_unit="forced by the test")]
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.py runs it)")


@pytest.mark.parametrize("check", gpu_check.CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("precision", CPU_PRECISIONS, ids=lambda p: p.name)
def test_device_check_passes_on_cpu(check, precision: Precision) -> None:
    assert check(torch.device("cpu"), precision)


@pytest.mark.cuda
@no_cuda
@pytest.mark.parametrize("check", gpu_check.CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp16"])
def test_device_check_passes_on_cuda(check, bf16: bool) -> None:
    if bf16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    assert check(torch.device("cuda"), choose_precision("cuda", True, cuda_bf16=bf16))


@pytest.mark.cuda
@no_cuda
@pytest.mark.parametrize("check", [gpu_check.check_pinned_host_fallback, gpu_check.check_graphed_step],
                         ids=lambda c: c.__name__)
def test_cuda_only_check_passes_on_cuda(check) -> None:
    # Pinned host memory and CUDA graphs exist on CUDA only; bench/gpu_check.py ran both on an H200.
    assert check(torch.device("cuda"), choose_precision("cuda", True))


def test_device_check_fails_when_training_diverges(monkeypatch) -> None:
    # A check that cannot fail proves nothing: a learning rate that blows up must fail it.
    original = gpu_check.from_dict
    monkeypatch.setattr(gpu_check, "from_dict", lambda cls, values: original(cls, {**values, "lr": 5.0}))
    with pytest.raises(AssertionError):
        gpu_check.check_training_step(torch.device("cpu"), CPU_PRECISIONS[0])


def test_precisions_of_cpu_lists_fp32_first() -> None:
    found = gpu_check.precisions_of(torch.device("cpu"))
    assert found[0].name == "fp32" and len(found) in (1, 2)


def test_device_check_end_to_end_trains_through_the_worker_on_data_outside_any_root(sample_subset, tmp_path) -> None:
    """The script's worker step, as the device machine runs it: a fresh process, data in a folder of its own."""
    import os
    import subprocess

    data = sample_subset(10, 2)  # 100 training images: a batch of 64 after the val split
    env = {k: v for k, v in os.environ.items() if k not in ("DATASET_ROOTS", "DATA_DIR", "DATASETS_DIR")}
    done = subprocess.run([sys.executable, str(SCRIPT), str(data), "--end-to-end-only"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "end to end: train_run succeeded" in done.stdout
    assert "checks passed" in done.stdout


def _write_wheel(folder: Path, module: str, source: str) -> Path:
    """A minimal pure-Python wheel holding one module, as pip accepts it offline."""
    import zipfile

    dist = f"{module}-1.0.dist-info"
    files = {
        f"{module}.py": source,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{dist}/RECORD"])
    wheel = folder / f"{module}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def test_import_or_install_installs_missing_modules_from_the_wheels(tmp_path, monkeypatch) -> None:
    # The GPU machine lacks the worker's dependencies: they travel as wheels and go into a temporary folder.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "tb_gpu_check_probe", raising=False)
    _write_wheel(tmp_path, "tb_gpu_check_probe", "VALUE = 42\n")
    assert gpu_check.import_or_install(("json", "tb_gpu_check_probe"), tmp_path) is None
    import tb_gpu_check_probe

    assert tb_gpu_check_probe.VALUE == 42
    assert not (tmp_path / "tb_gpu_check_probe.py").exists()  # installed elsewhere, not into the wheels folder
    sys.modules.pop("tb_gpu_check_probe")


def test_import_or_install_names_the_missing_module_without_wheels(tmp_path) -> None:
    missing = gpu_check.import_or_install(("json", "tb_gpu_check_absent"), tmp_path / "none")
    assert missing == "No module named 'tb_gpu_check_absent'"


def test_import_or_install_reports_a_broken_wheel(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "tb_gpu_check_absent-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    missing = gpu_check.import_or_install(("tb_gpu_check_absent",), tmp_path)
    assert missing is not None and missing.startswith("installing")
