"""Precision by capability (ml.precision), with the capability queries stubbed, and the trainer using it."""

from __future__ import annotations

import pytest
import torch

from ml import precision as precision_module
from ml.batching import BatchLoader, data_placement
from ml.config import TrainConfig, from_dict
from ml.models import get_spec
from ml.precision import choose_precision, cpu_flags, cpu_native_bf16
from ml.trainer import Callback, TrainStart, evaluate, train


def config(model: str = "task1", **overrides) -> TrainConfig:
    return from_dict(TrainConfig, {**get_spec(model).defaults, "epochs": 1, "log_every": 5, **overrides})


# --------------------------------------------------------------- choice ---

def test_choose_precision_cuda_with_bf16_is_bf16():
    p = choose_precision("cuda", True, cuda_bf16=True)
    assert (p.name, p.channels_last, p.grad_scaler, p.autocast_dtype) == ("bf16", True, False, torch.bfloat16)


def test_choose_precision_cuda_without_bf16_is_fp16_with_scaler():
    p = choose_precision("cuda:0", True, cuda_bf16=False)
    assert (p.name, p.channels_last, p.grad_scaler, p.autocast_dtype) == ("fp16", True, True, torch.float16)
    assert "pre-Ampere" in p.describe()


@pytest.mark.parametrize("unit", ["AMX", "AVX512-BF16"])
def test_choose_precision_cpu_with_native_bf16_is_bf16_channels_last(unit):
    p = choose_precision("cpu", True, cpu_bf16_unit=unit)
    assert (p.name, p.channels_last, p.grad_scaler) == ("bf16", True, False)
    assert unit in p.describe()


def test_choose_precision_cpu_without_native_bf16_is_fp32():
    p = choose_precision("cpu", True, cpu_bf16_unit=None)
    assert (p.name, p.channels_last, p.autocast_dtype) == ("fp32", False, None)
    assert "no native bf16" in p.reason


@pytest.mark.parametrize("device, caps", [("cuda", {"cuda_bf16": True}), ("cpu", {"cpu_bf16_unit": "AMX"})])
def test_choose_precision_amp_off_is_fp32_everywhere(device, caps):
    p = choose_precision(device, False, **caps)
    assert (p.name, p.channels_last, p.grad_scaler) == ("fp32", False, False)
    assert p.reason == "amp is off"


def test_cpu_native_bf16_reads_cpuinfo_flags_when_torch_cannot_tell(monkeypatch):
    # torch's probes missing (another release) or failing: the /proc/cpuinfo flags decide.
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: (_ for _ in ()).throw(RuntimeError("x")),
                        raising=False)
    assert cpu_native_bf16({"avx2", "avx512_bf16"}) == "AVX512-BF16"
    assert cpu_native_bf16({"avx512_bf16", "amx_bf16"}) == "AMX"
    assert cpu_native_bf16({"avx2", "avx512f"}) is None


def test_cpu_native_bf16_trusts_torch_probe(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_native_bf16(set()) == "AMX"


def test_cpu_flags_parses_cpuinfo_and_tolerates_absence(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


# ----------------------------------------------------------- data path ---

def test_data_placement_falls_back_to_pinned_memory_when_data_exceeds_gpu():
    placement, note = data_placement(10 * 2**30, torch.device("cuda"), free_bytes=8 * 2**30)
    assert placement == "pinned" and "pinned host memory" in note
    assert data_placement(2 * 2**30, torch.device("cuda"), free_bytes=8 * 2**30)[0] == "device"
    assert data_placement(10 * 2**30, torch.device("cpu"))[0] == "device"


def test_batch_loader_normalises_uint8_per_batch_like_normalize():
    from ml.batching import normalize

    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    loader = BatchLoader(images, torch.arange(10), 4, shuffle=False)
    x = torch.cat([x for x, _ in loader.batches()])
    assert x.dtype == torch.float32
    assert torch.allclose(x, normalize(images), atol=1e-5)


def test_batch_loader_augments_reproducibly_and_resumes_mid_epoch():
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    loader = BatchLoader(images, torch.arange(12), 4, shuffle=True, seed=3, augment=True)
    first = [x for x, _ in loader.batches(0)]
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in loader.batches(0)]))
    assert torch.equal(first[2], next(iter(loader.batches(0, start=2)))[0])  # resume replays the same crops
    plain = BatchLoader(images, torch.arange(12), 4, shuffle=True, seed=3)
    assert any(not torch.equal(a, b) for a, b in zip(first, [x for x, _ in plain.batches(0)]))


# ------------------------------------------------------------- trainer ---

class KeepStart(Callback):
    def __init__(self) -> None:
        self.info: TrainStart | None = None

    def on_train_start(self, info: TrainStart) -> None:
        self.info = info


def test_trainer_reports_bf16_on_a_cpu_with_native_bf16(synthetic_splits, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_native_bf16", lambda flags=None: "AVX512-BF16")
    keep = KeepStart()
    result = train("task1", config(epochs=1), synthetic_splits, device="cpu", callbacks=[keep])
    assert result.status == "completed"
    assert keep.info.precision.startswith("bf16 + channels_last") and "AVX512-BF16" in keep.info.precision
    assert "data on cpu" in keep.info.data_placement
    assert all(0.0 <= h["metrics"]["val/acc"] <= 1.0 for h in result.history)
    assert isinstance(result.final["val/loss"], float)


def test_trainer_amp_off_trains_fp32(synthetic_splits, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_native_bf16", lambda flags=None: "AMX")
    keep = KeepStart()
    train("task1", config(epochs=1, amp=False), synthetic_splits, device="cpu", callbacks=[keep])
    assert keep.info.precision.startswith("fp32") and "amp is off" in keep.info.precision


def test_trainer_without_native_bf16_trains_fp32(synthetic_splits, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_native_bf16", lambda flags=None: None)
    keep = KeepStart()
    train("task1", config(epochs=1), synthetic_splits, device="cpu", callbacks=[keep])
    assert keep.info.precision.startswith("fp32") and "no native bf16" in keep.info.precision


def test_evaluate_in_bf16_accumulates_in_fp32(synthetic_splits):
    torch.manual_seed(0)
    from ml.models import build_model

    model = build_model("task1")
    loader = BatchLoader(synthetic_splits.val.images, synthetic_splits.val.labels, 7, shuffle=False)
    fp32 = evaluate(model, loader)
    bf16 = evaluate(model, loader, precision=choose_precision("cpu", True, cpu_bf16_unit="AMX"))
    assert bf16["acc"] == pytest.approx(fp32["acc"], abs=0.1)
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05)


def test_compile_option_is_off_by_default_and_validated():
    assert from_dict(TrainConfig, get_spec("net2").defaults).compile is False
    with pytest.raises(Exception) as err:
        from_dict(TrainConfig, {"compile": "yes"})
    assert "compile" in err.value.errors
