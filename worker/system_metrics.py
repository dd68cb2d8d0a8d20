"""System metrics of a training: GPU load and memory, the process's CPU and RSS, images/s.

A `SystemSampler` is a trainer callback with a side thread: every `interval_s`
(5 s by default) the thread samples the machine and appends `system/…` points
to the run's MetricWriter, which writes them with its next batch (so sampling
adds no transaction). The training thread only notes its progress, a few
microseconds per step report.

- GPU utilisation and memory come from NVML (the `nvidia-ml-py` package, imported
  when present). Without it, GPU memory comes from torch.cuda and utilisation is
  left out. On a CPU-only worker the GPU series are simply absent.
- CPU % and RSS come from psutil: it reads /proc (or the OS's equivalent) for us,
  and its cpu_percent keeps the interval bookkeeping per process.
- images/s here is what the run achieves between samples, evaluations included,
  unlike train/images_per_s, which times training steps only.

Sampling is best effort: a sample that fails is logged and skipped; it never ends the training.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from typing import Any, Callable

import psutil
import torch

from ml.trainer import Callback, StepReport, TrainStart
from worker.metric_writer import MetricWriter, PendingPoint

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0
CPU_PERCENT = "system/cpu_percent"
RSS_MIB = "system/rss_mib"
IMAGES_PER_S = "system/images_per_s"
GPU_UTIL = "system/gpu_util_percent"
GPU_MEMORY_USED_MIB = "system/gpu_memory_used_mib"
GPU_MEMORY_TOTAL_MIB = "system/gpu_memory_total_mib"
MIB = 2**20


def _nvml() -> Any | None:
    """The initialised pynvml module (from nvidia-ml-py), or None without it or without a driver."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # not installed, no driver, no GPU
        return None


class GpuProbe:
    """GPU utilisation and memory of one CUDA device: NVML when it can, torch.cuda otherwise."""

    def __init__(self, device: torch.device, nvml: Any | None = None) -> None:
        self.device = device
        self.nvml = nvml
        self.handle = None
        if nvml is not None:
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.handle = nvml.nvmlDeviceGetHandleByIndex(index)

    def sample(self) -> dict[str, float]:
        if self.handle is not None:
            util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
            return {GPU_UTIL: float(util.gpu), GPU_MEMORY_USED_MIB: memory.used / MIB,
                    GPU_MEMORY_TOTAL_MIB: memory.total / MIB}
        free, total = torch.cuda.mem_get_info(self.device)
        return {GPU_MEMORY_USED_MIB: (total - free) / MIB, GPU_MEMORY_TOTAL_MIB: total / MIB}


def gpu_probe(device: torch.device) -> GpuProbe | None:
    """A probe for `device` when it is a CUDA device, else None (no GPU series)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        return GpuProbe(device, _nvml())
    except Exception as err:
        log.warning("no GPU metrics: %s: %s", type(err).__name__, err)
        return None


def cpu_model_name() -> str:
    """The CPU's marketing name (/proc/cpuinfo's 'model name'), else what platform knows."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_info(device: torch.device) -> dict[str, Any]:
    """What a run trains on: device name, torch, CUDA and driver versions (None where there is none)."""
    # "cuda" only for a CUDA device: torch.version.cuda is the build's CUDA, also on a CPU-only machine.
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__,
                            "cuda": torch.version.cuda if device.type == "cuda" else None,
                            "driver": None, "cpu": cpu_model_name(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda" and torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name(device)
        nvml = _nvml()
        if nvml is not None:
            try:
                driver = nvml.nvmlSystemGetDriverVersion()
                info["driver"] = driver.decode() if isinstance(driver, bytes) else str(driver)
            except Exception:
                pass
    else:
        info["name"] = info["cpu"]
    return info


class SystemSampler(Callback):
    """Samples the machine every `interval_s` on its own thread and hands `system/…` points to `writer`.

    Start it with `on_train_start` (the trainer calls it; it also takes the first sample) and stop it with `close()`.
    """

    def __init__(self, writer: MetricWriter, device: torch.device | str, batch_size: int, *,
                 interval_s: float = DEFAULT_INTERVAL_S, gpu: GpuProbe | None | bool = True,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.writer = writer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.interval_s = interval_s
        self._clock = clock
        self._gpu = gpu_probe(self.device) if gpu is True else (gpu or None)
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts psutil's interval
        self._step, self._epoch = 0, 0.0
        self._last_step, self._last_time = 0, clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)
        self.samples = 0

    # ------------------------------------------------------------ callbacks ---

    def on_train_start(self, info: TrainStart) -> None:
        self._step = self._last_step = info.start_step
        self._epoch = info.start_step / max(info.steps_per_epoch, 1)
        self._last_time = self._clock()
        # A first sample now (data loaded, model built), so that even a run of a few seconds has one;
        # it goes out with the evaluation at step 0.
        self.record()
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def on_step(self, report: StepReport) -> None:
        self._step, self._epoch = report.step, report.epoch

    # --------------------------------------------------------------- sampling ---

    def sample(self) -> dict[str, float]:
        """One reading of every series this machine has."""
        values = {CPU_PERCENT: self._process.cpu_percent(None), RSS_MIB: self._process.memory_info().rss / MIB}
        now, step = self._clock(), self._step
        if now > self._last_time and step > self._last_step:
            values[IMAGES_PER_S] = (step - self._last_step) * self.batch_size / (now - self._last_time)
        self._last_step, self._last_time = step, now
        if self._gpu is not None:
            try:
                values.update(self._gpu.sample())
            except Exception as err:
                log.warning("GPU sample failed: %s: %s", type(err).__name__, err)
        return values

    def record(self) -> None:
        """Sample once and buffer the points at the current step; never raises."""
        try:
            values = self.sample()
        except Exception as err:
            log.warning("system sample failed: %s: %s", type(err).__name__, err)
            return
        step, epoch, now = self._step, self._epoch, self.writer.elapsed()
        self.writer.add_points([PendingPoint(name, step, epoch, now, value) for name, value in values.items()])
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.record()

    def close(self) -> None:
        """Stop sampling. No last sample: it would cost the run one more transaction at its end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __enter__(self) -> "SystemSampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EnvironmentRecorder(Callback):
    """Records on the run what it trains on: the precision and data placement as events, and the
    device, CUDA, driver and torch versions plus the precision as run fields. Best effort, like RunRecorder."""

    def __init__(self, store: Any, device: torch.device) -> None:
        self.store = store
        self.device = device

    def on_train_start(self, info: TrainStart) -> None:
        try:
            environment = device_info(self.device)
            self.store.record_environment(precision=info.precision, device_info=environment)
            self.store.add_event("info", f"precision: {info.precision}")
            if info.data_placement:
                self.store.add_event("info", info.data_placement)
            if info.step_mode:
                self.store.add_event("info", info.step_mode)
        except Exception as err:
            log.warning("recording the run's environment failed: %s: %s", type(err).__name__, err)

    def on_notice(self, message: str) -> None:
        try:
            self.store.add_event("info", message)
        except Exception as err:
            log.warning("recording a notice on the run failed: %s: %s", type(err).__name__, err)
