"""`trainboard serve --workers N`: each worker's environment (GPU pinning, CPU thread split)."""

from __future__ import annotations

import pytest

from app import embedded
from app.cli import main


def test_worker_environments_pin_each_worker_to_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "visible_gpus", lambda: ["2", "5"])  # CUDA cannot run here

    envs = embedded.worker_environments(3)

    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["2", "5", "2"]


def test_worker_environments_split_cpu_threads_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "visible_gpus", lambda: [])
    monkeypatch.setattr(embedded.os, "cpu_count", lambda: 8)

    envs = embedded.worker_environments(3)

    assert [env["OMP_NUM_THREADS"] for env in envs] == ["2", "2", "2"]
    assert all(env["CUDA_VISIBLE_DEVICES"] == "" for env in envs)


def test_worker_environments_one_worker_inherits_everything() -> None:
    assert embedded.worker_environments(1) == [{}]


def test_visible_gpus_respects_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,7")

    assert embedded.visible_gpus() == ["3", "7"]


@pytest.mark.parametrize("workers", ["0", "65", "two", "²"])
def test_serve_workers_out_of_range_is_refused(workers: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--workers", workers])

    assert exited.value.code == 2 and "--workers: must be a whole number from 1 to 64" in capsys.readouterr().err
