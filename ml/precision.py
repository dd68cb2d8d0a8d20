"""Which numeric precision a training runs at, chosen from what the device computes natively.

- CUDA with bf16 (Ampere and newer): bf16 autocast + channels_last.
- CUDA without bf16 (Turing and older): fp16 autocast + channels_last + a gradient
  scaler, since fp16's narrow range underflows small gradients without one.
- CPU with native bf16 (AMX or AVX512-BF16): bf16 autocast + channels_last. oneDNN
  runs bf16 convolutions on those units at about twice the fp32 rate, and
  channels_last is the layout its bf16 kernels want (measured: 2.2-2.8x together).
- Any other CPU: fp32. There bf16 is emulated and slower than fp32.
- `amp=False`: fp32 everywhere.

Losses and accuracies are always accumulated in fp32 by the callers; only the
model's forward pass runs under autocast. The capability queries are plain
functions taking their answers as arguments, so that tests can stub them.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flags of the units that compute bf16 natively (Intel AMX, AVX512-BF16 on Intel and AMD Zen 4+).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Precision:
    """How a training computes: the autocast dtype (None: fp32), the memory format and the loss scaler."""

    name: str  # "bf16" | "fp16" | "fp32"
    device_type: str  # "cuda" | "cpu" | …
    channels_last: bool
    grad_scaler: bool
    reason: str  # why this precision, for the run's history

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self, cache_enabled: bool = True) -> AbstractContextManager:
        """The forward pass's context: autocast at this precision, or nothing for fp32.

        `cache_enabled=False` inside a CUDA graph capture: cached casts would outlive the capture."""
        dtype = self.autocast_dtype
        if dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=dtype, cache_enabled=cache_enabled)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def make_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.grad_scaler else None

    def label(self) -> str:
        """Short, e.g. "bf16 + channels_last" (fits worker_heartbeat.precision, 64 characters)."""
        layout = " + channels_last" if self.channels_last else ""
        scaler = " + gradient scaler" if self.grad_scaler else ""
        return f"{self.name}{layout}{scaler}"

    def describe(self) -> str:
        return f"{self.label()} ({self.reason})"


FP32_CPU = Precision("fp32", "cpu", channels_last=False, grad_scaler=False, reason="default")


# ------------------------------------------------------------ capabilities ---

def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_native_bf16(flags: set[str] | None = None) -> str | None:
    """The unit that computes bf16 natively on this CPU ("AMX", "AVX512-BF16"), or None.

    Asks torch's cpuinfo first (works on any OS torch supports), then /proc/cpuinfo,
    because torch's private probes may move between releases.
    """
    probes = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    for unit, probe in probes:
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return unit
        except Exception:  # a probe that cannot run here says nothing
            pass
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def cuda_bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


# ------------------------------------------------------------------ choice ---

def choose_precision(device: torch.device | str, amp: bool, *, cuda_bf16: bool | None = None,
                     cpu_bf16_unit: str | None | bool = False) -> Precision:
    """The precision to train and evaluate at on `device`.

    `cuda_bf16` and `cpu_bf16_unit` are the capability answers; left out, they are
    asked of the machine (tests pass them in). `cpu_bf16_unit=False` means "ask".
    """
    device = torch.device(device)
    if not amp:
        return Precision("fp32", device.type, channels_last=False, grad_scaler=False, reason="amp is off")
    if device.type == "cuda":
        bf16 = cuda_bf16_supported() if cuda_bf16 is None else cuda_bf16
        if bf16:
            return Precision("bf16", "cuda", channels_last=True, grad_scaler=False, reason="the GPU supports bf16")
        return Precision("fp16", "cuda", channels_last=True, grad_scaler=True,
                         reason="the GPU has no bf16 (pre-Ampere)")
    if device.type == "cpu":
        unit = cpu_native_bf16() if cpu_bf16_unit is False else cpu_bf16_unit
        if unit:
            return Precision("bf16", "cpu", channels_last=True, grad_scaler=False,
                             reason=f"the CPU computes bf16 natively ({unit})")
        return Precision("fp32", "cpu", channels_last=False, grad_scaler=False,
                         reason="the CPU has no native bf16 (no AMX or AVX512-BF16)")
    return Precision("fp32", device.type, channels_last=False, grad_scaler=False,
                     reason=f"no mixed precision on {device.type}")
