"""System metrics (worker.system_metrics): sampling, GPU probes (NVML stubbed: no GPU here), the run's environment."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ml.trainer import StepReport, TrainStart
from worker import system_metrics
from worker.metric_writer import MetricWriter
from worker.system_metrics import (
    CPU_PERCENT, GPU_MEMORY_TOTAL_MIB, GPU_MEMORY_USED_MIB, GPU_UTIL, IMAGES_PER_S, RSS_MIB, GpuProbe,
    EnvironmentRecorder, SystemSampler, device_info,
)
from worker.tasks import train_run


class Sink:
    """The writer's sink: keeps every batch it is handed."""

    def __init__(self) -> None:
        self.batches: list[list] = []

    def __call__(self, points) -> None:
        self.batches.append(list(points))

    @property
    def points(self) -> list:
        return [p for batch in self.batches for p in batch]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def start(step: int = 0) -> TrainStart:
    return TrainStart(total_steps=100, steps_per_epoch=10, start_step=step, parameters=1, trainable_parameters=1,
                      device="cpu", num_train=640, num_val=64, num_test=64)


def step_report(step: int) -> StepReport:
    return StepReport(step=step, epoch=step / 10, loss=1.0, lr=0.1, images_per_s=1.0, total_steps=100)


class FakeNvml:
    """The slice of pynvml the probe calls, answering like an 80 GB GPU at 73 % load."""

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(gpu=73, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(used=20 * 2**30, total=80 * 2**30, free=60 * 2**30)


def test_sampler_cpu_only_records_cpu_rss_and_images_per_s_without_gpu_series():
    sink, clock = Sink(), FakeClock()
    writer = MetricWriter(sink)
    sampler = SystemSampler(writer, "cpu", batch_size=64, gpu=None, clock=clock, interval_s=3600)
    sampler.on_train_start(start())
    sampler.on_step(step_report(20))
    clock.now += 4.0
    sampler.record()
    writer.flush(force=True)
    sampler.close()
    values = {p.name: p.value for p in sink.points}
    assert {CPU_PERCENT, RSS_MIB, IMAGES_PER_S} <= set(values)
    assert not any(name.startswith("system/gpu") for name in values)
    assert values[IMAGES_PER_S] == pytest.approx(20 * 64 / 4.0)
    assert values[RSS_MIB] > 10  # a Python process with torch loaded
    assert all(p.step == 20 for p in sink.points if p.name == IMAGES_PER_S)


def test_sampler_without_progress_leaves_images_per_s_out():
    sink, clock = Sink(), FakeClock()
    writer = MetricWriter(sink)
    sampler = SystemSampler(writer, "cpu", batch_size=64, gpu=None, clock=clock)
    clock.now += 5.0
    sampler.record()  # still loading data: no step yet
    writer.flush(force=True)
    assert IMAGES_PER_S not in {p.name for p in sink.points} and CPU_PERCENT in {p.name for p in sink.points}


def test_gpu_probe_with_nvml_reports_utilisation_and_memory():
    probe = GpuProbe(torch.device("cuda", 0), nvml=FakeNvml())
    sample = probe.sample()
    assert sample == {GPU_UTIL: 73.0, GPU_MEMORY_USED_MIB: 20 * 1024.0, GPU_MEMORY_TOTAL_MIB: 80 * 1024.0}


def test_gpu_probe_without_nvml_reads_torch_cuda_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (6 * 2**30, 16 * 2**30))
    sample = GpuProbe(torch.device("cuda", 0), nvml=None).sample()
    assert sample == {GPU_MEMORY_USED_MIB: 10 * 1024.0, GPU_MEMORY_TOTAL_MIB: 16 * 1024.0}
    assert GPU_UTIL not in sample


def test_sampler_failing_gpu_probe_keeps_cpu_series():
    class Broken:
        def sample(self):
            raise RuntimeError("NVML: GPU is lost")

    sink = Sink()
    writer = MetricWriter(sink)
    sampler = SystemSampler(writer, "cuda", batch_size=64, gpu=Broken())
    sampler.record()
    writer.flush(force=True)
    assert {CPU_PERCENT, RSS_MIB} <= {p.name for p in sink.points}


def test_gpu_probe_on_cpu_is_absent():
    assert system_metrics.gpu_probe(torch.device("cpu")) is None


def test_sampler_thread_samples_until_closed():
    sink = Sink()
    writer = MetricWriter(sink)
    sampler = SystemSampler(writer, "cpu", batch_size=8, gpu=None, interval_s=0.02)
    sampler.on_train_start(start())
    done = threading.Event()
    threading.Timer(0.3, done.set).start()
    done.wait(5)
    sampler.close()
    taken = sampler.samples
    assert taken >= 2
    assert not sampler._thread.is_alive()
    done.wait(0.1)
    assert sampler.samples == taken  # nothing after close


def test_device_info_on_cpu_names_the_cpu_and_torch():
    info = device_info(torch.device("cpu"))
    assert info["torch"] == torch.__version__ and info["name"] and info["device"] == "cpu"
    assert info["driver"] is None and info["cuda"] is None  # torch's CUDA build is no CUDA on a CPU worker


class EventStore:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[tuple[str, str]] = []
        self.fail = fail

    def add_event(self, kind: str, message: str) -> None:
        if self.fail:
            raise OSError("database is locked")
        self.events.append((kind, message))


def test_environment_recorder_records_a_notice_as_an_event() -> None:
    store = EventStore()
    EnvironmentRecorder(store, torch.device("cpu")).on_notice("training steps: eager (the CUDA graph capture failed)")
    assert store.events == [("info", "training steps: eager (the CUDA graph capture failed)")]


def test_environment_recorder_notice_that_cannot_be_stored_does_not_stop_training() -> None:
    EnvironmentRecorder(EventStore(fail=True), torch.device("cpu")).on_notice("anything")  # logged, not raised


# ------------------------------------------------------------- end to end ---

@pytest.mark.slow
def test_train_run_records_precision_device_and_system_points(db, worker_settings, cifar_subset: Path) -> None:
    run_id = db.queue(db.tiny_dataset(cifar_subset), epochs=1, batch_size=64, eval_every=1.0, log_every=2,
                      early_stop_count=0)
    assert train_run(run_id) == "succeeded"
    run = db.run(run_id)
    names = {p.name for p in db.points(run_id)}
    assert {CPU_PERCENT, RSS_MIB} <= names
    assert not any(name.startswith("system/gpu") for name in names)  # CPU-only worker
    assert run.precision and run.precision.split()[0] in ("bf16", "fp32")
    assert run.device_info["torch"] == torch.__version__ and run.device_info["name"]
    messages = [e.message for e in db.events(run_id)]
    assert any(m.startswith("precision: ") for m in messages)
    assert any("data on cpu" in m for m in messages)


def test_system_points_ride_with_trainer_points_and_wait_at_most_max_wait():
    sink, clock = Sink(), FakeClock()
    writer = MetricWriter(sink, clock=clock)
    sampler = SystemSampler(writer, "cpu", batch_size=64, gpu=None, clock=clock)
    sampler.record()
    assert writer.flush() and sink.batches == []  # alone and young: no transaction of their own
    writer.on_step(step_report(2))
    assert writer.flush() and len(sink.batches) == 1  # together with the trainer's points
    assert {CPU_PERCENT, "train/step_loss"} <= {p.name for p in sink.batches[0]}
    sampler.record()
    clock.now += writer.passenger_max_wait_s + 1
    assert writer.flush() and len(sink.batches) == 2  # old enough: written alone
    assert {p.name for p in sink.batches[1]} <= {CPU_PERCENT, RSS_MIB, IMAGES_PER_S}
